"""The results table: one long-format row per trial x epoch, built from MLflow, stored as Parquet.

Columns: the trial's identity (``sweep_id``, ``phase``, ``arm``, ``trial_index``, ``seed``,
``status``, ``run_id``, ``trial_key``), ``epoch``, every logged metric (``loss`` ...
``test_accuracy``, timings, BN diagnostics; a metric logged only at the last epoch is NaN
elsewhere) and the trial's resolved configuration as ``config.<name>`` columns.

    >>> import bnsearch
    >>> table = bnsearch.load_results("bn_vs_none")          # the latest sweep, from MLflow
    >>> table = bnsearch.load_results("results.parquet")     # or a file
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnsearch.identity import KEYS as IDENTITY_KEYS, TrialId
from bnsearch.spec import COMPLETED, FAILURES

IDENTITY = ("sweep_id", "phase", "arm", "trial_index", "seed", "status", "run_id", "trial_key")
# Params that identify a trial or describe the sweep rather than configure the trial.
NOT_CONFIG = {*IDENTITY_KEYS, "split_seed", "model", "dataset"}
FILE = "results.parquet"
# The best configuration is chosen on the mean of the metric over a trial's last epochs: one
# epoch's value is noisy, and the noise picks winners.
SELECTION_EPOCHS = 3


def from_records(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The long table from :meth:`bnsearch.tracking.SweepTracker.trial_records`."""
    rows = []
    for record in records:
        tags, params = record["tags"], record["params"]
        trial = TrialId.from_run(tags, params)
        identity = {
            "sweep_id": trial.sweep_id, "phase": trial.phase, "arm": trial.arm, "trial_index": trial.trial_index, "seed": trial.seed,
            "status": tags.get("status"), "run_id": record["run_id"], "trial_key": tags.get("trial_key"),
        }
        config = {
            f"config.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v
            for k, v in params.items() if k not in NOT_CONFIG and not k.startswith("dataset.")
        }
        history = record["history"]
        for epoch in sorted({step for values in history.values() for step in values}):
            metrics = {key: values.get(epoch, float("nan")) for key, values in history.items()}
            rows.append({**identity, "epoch": epoch, **metrics, **config})
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*IDENTITY, "epoch"])
    # Whole-number parameters stay whole where other arms lack them (a column with gaps is float otherwise).
    kinds: dict[str, set] = {}
    for record in records:
        for k, v in record["params"].items():
            kinds.setdefault(f"config.{k}", set()).add(type(v))
    for name in [c for c, types in kinds.items() if types == {int} and c in table and table[c].isna().any()]:
        table[name] = table[name].astype("Int64")
    front = [*IDENTITY, "epoch"]
    metrics = sorted(c for c in table.columns if c not in front and not c.startswith("config."))
    configs = sorted(c for c in table.columns if c.startswith("config."))
    return table[front + metrics + configs].sort_values(["phase", "arm", "trial_index", "epoch"], ignore_index=True)


def last_epochs(table: pd.DataFrame, phase: str) -> pd.DataFrame:
    """One row per trial of ``phase``: its last reported epoch."""
    rows = table[table["phase"] == phase]
    return rows.sort_values("epoch").groupby("trial_key", sort=False).tail(1).sort_values(["arm", "trial_index"], ignore_index=True)


def final_values(table: pd.DataFrame, metric: str = "test_accuracy", phase: str = "replicate") -> pd.DataFrame:
    """What the statistics work on: per trial ``arm``, ``seed``, ``value`` (accuracy points,
    NaN where the trial failed) and ``failed``."""
    last = last_epochs(table, phase)
    failed = last["status"].isin(FAILURES) | (last.get("diverged", 0) == 1) | (last.get("collapsed", 0) == 1)
    values = last[metric] if metric in last else pd.Series(float("nan"), index=last.index)
    return pd.DataFrame({
        "arm": last["arm"], "seed": last["seed"], "value": (100 * values).where(~failed), "failed": failed,
    })


def finished_replicates(table: pd.DataFrame) -> set[tuple[str, int]]:
    """The (arm, seed) pairs whose replicate trial already ran to its end."""
    last = last_epochs(table, "replicate") if len(table) else table
    done = last[last["status"].isin([s for s in COMPLETED if s != "stopped_early"])] if len(last) else last
    return {(arm, int(seed)) for arm, seed in zip(done.get("arm", []), done.get("seed", []))}


def smoothed(table: pd.DataFrame, metric: str, phase: str = "search", epochs: int = SELECTION_EPOCHS) -> pd.Series:
    """Per trial key, the mean of ``metric`` over the trial's last ``epochs`` epochs."""
    rows = table[table["phase"] == phase].dropna(subset=[metric]).sort_values("epoch")
    return rows.groupby("trial_key")[metric].apply(lambda values: values.tail(epochs).mean())


def best_configs(table: pd.DataFrame, arms: list[str], metric: str, mode: str) -> dict[str, dict[str, Any]]:
    """Per arm, the configuration of its best search trial: the best ``metric``, averaged over
    the last ``SELECTION_EPOCHS`` epochs, among trials that ran the full budget (any that did
    not fail, if none did). Every search trial was validated on the same split.

    Raises ``LookupError`` naming an arm with no usable trial.
    """
    last = last_epochs(table, "search")
    last = last.assign(selection=last["trial_key"].map(smoothed(table, metric)))
    best = {}
    for arm in arms:
        trials = last[(last["arm"] == arm) & ~last["status"].isin(FAILURES)].dropna(subset=["selection"])
        finished = trials[trials["status"] == "finished"]
        pool = finished if len(finished) else trials
        if pool.empty:
            raise LookupError(f"arm {arm!r} has no search trial that ran without failing (diverged, collapsed or crashed): "
                              + how_trials_ended(last[last["arm"] == arm], metric))
        best[arm] = config_of(pool.loc[pool["selection"].idxmax() if mode == "max" else pool["selection"].idxmin()])
    return best


def how_trials_ended(last: pd.DataFrame, metric: str) -> str:
    """Per trial (its last epoch's row), how it ended: what a user reads to see why an arm has
    nothing to choose from."""
    if last.empty:
        return "none recorded"
    return ", ".join(f"trial {row.trial_index} {row.status} at epoch {int(row.epoch)}"
                     + ("" if pd.notna(row.selection) else f", no {metric}") for row in last.itertuples())


TEST_CORRECT_FILE = "test_correct.npz"  # per replicate run: a bit per test example, 1 where right


def pack_correct(correct: np.ndarray) -> bytes:
    """Per-example results as ``.npz`` bytes: a bit per example (``np.packbits``) and their count."""
    correct = np.asarray(correct, dtype=bool)
    buffer = io.BytesIO()
    np.savez(buffer, bits=np.packbits(correct), n=len(correct))
    return buffer.getvalue()


def unpack_correct(data: bytes) -> np.ndarray:
    """The boolean per-example vector that :func:`pack_correct` stored."""
    with np.load(io.BytesIO(data)) as stored:
        return np.unpackbits(stored["bits"])[: int(stored["n"])].astype(bool)


def config_of(row: pd.Series) -> dict[str, Any]:
    """A table row's trial configuration, typed again, without the parameters it lacks."""
    return {k.removeprefix("config."): _config_value(v) for k, v in row.items() if k.startswith("config.") and not missing(v)}


def searched_config(row: pd.Series) -> dict[str, Any]:
    """A search trial's configuration on the scale it was searched on (``one_minus_momentum``, not ``momentum``)."""
    config = config_of(row)
    for name in [k for k in config if k.startswith("one_minus_")]:  # searched on this scale
        config.pop(name.removeprefix("one_minus_"), None)
    return config


def missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def _config_value(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value.item() if hasattr(value, "item") else value  # numpy scalar → Python


def write(table: pd.DataFrame, path: str | Path) -> Path:
    table.to_parquet(path, engine="pyarrow", index=False)
    return Path(path)


def load_results(source: str | os.PathLike, *, tracking_uri: str | None = None, sweep_id: str | None = None) -> pd.DataFrame:
    """The results table of a sweep, in one call.

    ``source`` is a Parquet file, or an MLflow experiment name: then the sweep ``sweep_id``
    (default: the latest) is read from ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``,
    else the local store under ``./bnsearch-results``); its logged ``results.parquet`` when it
    has one, else the table is rebuilt from its trial runs.
    """
    if str(source).endswith(".parquet"):
        return pd.read_parquet(source, engine="pyarrow")
    from bnsearch import tracking

    tracker = tracking.SweepTracker(tracking_uri or tracking.resolve_tracking_uri(), str(source), create=False)
    tracker.open_sweep(sweep_id)
    with tempfile.TemporaryDirectory() as tmp:
        logged = tracker.download(FILE, tmp)
        if logged is not None:
            return pd.read_parquet(logged, engine="pyarrow")
    return from_records(tracker.trial_records())
