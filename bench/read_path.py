"""The read path at scale: a synthetic MLflow store of a sweep with 10,000 trial runs, read back
as the driver and `bnsearch report` read it, with MLflow client calls counted.

    python bench/read_path.py [--runs 10000] [--epochs 10] [--store DIR] [--old-sample 20]

The store holds what a sweep of ``bn_vs_none`` leaves: ``--runs`` child runs under one parent
(all but 40 search trials over two arms, finished or stopped early; 2 arms x 20 replicate seeds
with per-example test results), each with the tags and params a trial logs, 20 metrics per
epoch and the history file its process writes. Building it takes minutes; a ``--store`` that
holds one of the same size is reused. Measured, side by side:
- the report rebuilt from it (``bnsearch report``: the table, statistics, plots, files logged);
- the results table alone, read the way it is now and, on ``--old-sample`` runs, the way it was
  (one request per metric per run), per run and scaled to all runs;
- a read again by the same driver, nothing changed (what a reader that does not follow the
  trials' reports pays after each phase);
- the driver's own table, kept from its trials' reports: every epoch of every run replayed as a
  report, then the table built from what was kept (what the driver pays for each look);
- a trial's lookup of its own run by its key, as every trial does when it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_time_s", "eval_time_s",
           "recalibration_time_s", "trace_time_s", "train_samples_per_s", "bn_mode_gap", "bn_stat_lag", "bn_mean_shift",
           "bn_var_ratio", "grad_norm", "weight_norm", "diverged", "collapsed", "val_accuracy_precise")
REPLICATE_SEEDS = 20
TEST_EXAMPLES = 2000


class CallCounter:
    """Counts every call of an MlflowClient method and every file read from the artifact store
    straight, in this process, while active."""

    def __init__(self):
        from mlflow.tracking import MlflowClient

        self.calls: dict[str, int] = {}
        self.originals = {name: fn for name, fn in vars(MlflowClient).items() if callable(fn) and not name.startswith("_")}
        self.cls = MlflowClient

    def __enter__(self):
        from bnsearch.tracking import store

        for name, fn in self.originals.items():
            setattr(self.cls, name, self._counted(name, fn))
        self.read_artifact = store.read_artifact  # a history file, read from the artifact store straight
        store.read_artifact = self._counted("read_artifact", self.read_artifact)
        return self

    def __exit__(self, *exc):
        from bnsearch.tracking import store

        for name, fn in self.originals.items():
            setattr(self.cls, name, fn)
        store.read_artifact = self.read_artifact

    def _counted(self, name, fn):
        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        return counted

    def total(self) -> int:
        return sum(self.calls.values())


def spec_record(sweep) -> dict:
    return {**sweep.to_dict(), "arms": list(sweep.arms()), "dry_run": False,
            "comparisons": [dataclasses.asdict(c) for c in sweep.declared_comparisons()]}


def build_store(storage: Path, runs: int, epochs: int) -> None:
    """The synthetic sweep, written with MLflow's client as trials and driver write it, but
    each trial's epochs in one batch (a trial sends one per epoch: that costs only the build)."""
    from mlflow.entities import Metric
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    from bnsearch import results, tracking
    from bnsearch.cli import load_sweep
    from bnsearch.identity import TrialId
    from bnsearch.tracking.store import as_params, encode_history

    sweep = load_sweep(str(ROOT / "sweeps" / "bn_vs_none.py"))
    uri = tracking.default_tracking_uri(storage)
    tracker = tracking.SweepTracker(uri, sweep.name, artifact_root=tracking.local_artifact_root(uri, storage))
    tracker.start_sweep("bench", params={}, tags={}, artifacts={"spec.json": spec_record(sweep)})
    client, rng = tracker.client, np.random.default_rng(0)
    arms = list(sweep.arms())
    search = runs - len(arms) * REPLICATE_SEEDS
    trials = [(TrialId("bench", "search", arms[i % 2], i // 2, 10_000 + i // 2), rng.random() < 0.3) for i in range(search)]
    trials += [(TrialId("bench", "replicate", arm, seed, seed), False) for seed in range(REPLICATE_SEEDS) for arm in arms]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n, (trial, stopped) in enumerate(trials):
            config = {**sweep.resolve(trial.arm).config, "learning_rate": float(10 ** rng.uniform(-4, -1)),
                      "batch_size": int(rng.choice([32, 64, 128])), "arm": trial.arm, "phase": trial.phase,
                      "trial_index": trial.trial_index, "seed": trial.seed, "model": sweep.model, "dataset": sweep.dataset}
            last = 2 if stopped else epochs
            skill = 0.9 + 0.05 * (trial.arm == "before") + 0.02 * rng.standard_normal()
            history = {key: {e: float(skill * e / last if "accuracy" in key else rng.random()) for e in range(1, last + 1)}
                       for key in METRICS}
            history["epoch"] = {e: float(e) for e in range(1, last + 1)}
            if trial.phase == "replicate":
                history["test_accuracy"] = {last: skill}
            status = "stopped_early" if stopped else "finished"
            tags = {MLFLOW_RUN_NAME: trial.run_name, "trial_key": trial.key, "status": status, **trial.tags(),
                    MLFLOW_PARENT_RUN_ID: tracker.parent_run_id}
            run_id = client.create_run(tracker.experiment_id, run_name=trial.run_name, tags=tags).info.run_id
            client.log_batch(run_id, params=as_params(config),
                             metrics=[Metric(k, v, 0, step) for k, steps in history.items() for step, v in steps.items()])
            files = {tracking.HISTORY_FILE: json.dumps(encode_history(history)).encode()}
            if trial.phase == "replicate":
                files[results.TEST_CORRECT_FILE] = results.pack_correct(rng.random(TEST_EXAMPLES) < skill)
            for name, content in files.items():
                (Path(tmp) / name).write_bytes(content)
                client.log_artifact(run_id, str(Path(tmp) / name))
            client.set_terminated(run_id, "FINISHED")
            if (n + 1) % 1000 == 0:
                print(f"  {n + 1} runs written, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    tracker.end_sweep(True)
    (storage / "runs.json").write_text(json.dumps({"runs": runs, "epochs": epochs}))


def measure(storage: Path, runs: int, old_sample: int) -> dict:
    from bnsearch import results, session, tracking
    from bnsearch.tracking.store import find_run, read_history

    uri = tracking.default_tracking_uri(storage)
    out: dict = {"runs": runs}
    with CallCounter() as counter:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            session.report("bn_vs_none", storage=storage, tracking_uri=uri, sweep_id="bench")
        out["report_s"] = time.perf_counter() - start
        out["report_calls"] = dict(counter.calls)
    tracker = tracking.SweepTracker(uri, "bn_vs_none", create=False)
    tracker.open_sweep("bench")
    with CallCounter() as counter:
        start = time.perf_counter()
        table = results.from_records(tracker.trial_records())
        out["table_s"], out["table_calls"], out["table_rows"] = time.perf_counter() - start, dict(counter.calls), len(table)
    with CallCounter() as counter:
        start = time.perf_counter()
        tracker.trial_records()
        out["read_again_s"], out["read_again_calls"] = time.perf_counter() - start, dict(counter.calls)
    out.update(followed(uri))
    sample = tracker.child_runs()[:old_sample]
    with CallCounter() as counter:
        start = time.perf_counter()
        for run in sample:
            read_history(tracker.client, run)
        per_run = (time.perf_counter() - start) / len(sample)
        out["old_per_run_s"], out["old_calls_per_run"] = per_run, counter.total() / len(sample)
    out["old_table_s_scaled"] = per_run * runs
    keys = [r.data.tags["trial_key"] for r in sample[:20]]
    lookups = []
    for key in keys:
        start = time.perf_counter()
        find_run(tracker.client, tracker.experiment_id, trial_key=key)
        lookups.append(time.perf_counter() - start)
    out["own_run_lookup_ms"] = 1000 * statistics.median(lookups)
    return out


def followed(uri: str) -> dict:
    """What following the reports costs the driver: per report kept, and per table built from them."""
    from bnsearch import results, tracking
    from bnsearch.identity import TrialId

    driver = tracking.SweepTracker(uri, "bn_vs_none", create=False)
    driver.open_sweep("bench")
    driver.follow_reports()  # a continued sweep's driver reads the store once, as it starts
    reports = 0
    start = time.perf_counter()
    for record in driver.trial_records():
        trial, history = TrialId.from_run(record["tags"], record["params"]), record["history"]
        for step in sorted({s for values in history.values() for s in values}):
            driver.record_report(trial, record["run_id"], record["params"],
                                 {k: values[step] for k, values in history.items() if step in values})
            reports += 1
    kept_s = time.perf_counter() - start
    with CallCounter() as counter:
        start = time.perf_counter()
        results.from_records(driver.trial_records())
        table_s = time.perf_counter() - start
    return {"followed_report_us": 1e6 * kept_s / reports, "followed_table_s": table_s, "followed_table_calls": dict(counter.calls)}


def run(runs: int = 10_000, epochs: int = 10, store: Path | None = None, old_sample: int = 20) -> dict:
    """The figures above, on the store kept in ``store`` (built there first unless it already
    holds one of this size; without ``store``, in a temporary directory)."""
    with contextlib.nullcontext(store) if store else tempfile.TemporaryDirectory(prefix="bnsearch-read-") as where:
        storage = Path(where).resolve()
        made = storage / "runs.json"
        build_s = None
        if not (made.is_file() and json.loads(made.read_text()) == {"runs": runs, "epochs": epochs}):
            if (storage / "mlflow.db").exists():
                raise SystemExit(f"--store {storage} holds another store; give an empty directory")
            storage.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            build_store(storage, runs, epochs)
            build_s = time.perf_counter() - start
        figures = {"epochs": epochs, "build_s": build_s, **measure(storage, runs, old_sample)}
    for part in ("report", "table"):
        figures[f"{part}_calls_per_trial"] = sum(figures[f"{part}_calls"].values()) / runs
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--store", type=Path, help="where the synthetic store is kept (reused if it has --runs runs)")
    parser.add_argument("--old-sample", type=int, default=20, help="runs read the old way (one request per metric)")
    args = parser.parse_args()
    figures = run(args.runs, args.epochs, args.store, args.old_sample)
    build_s = figures["build_s"]
    print(f"store: {args.runs} trial runs x {args.epochs} epochs x {len(METRICS)} metrics"
          + (f" (built in {build_s:.0f} s)" if build_s else " (reused)"))
    print(f"report rebuild (bnsearch report):   {figures['report_s']:7.1f} s, {figures['report_calls_per_trial']:.2f} client calls per trial "
          f"{figures['report_calls']}")
    print(f"results table, now:                 {figures['table_s']:7.1f} s, {figures['table_calls_per_trial']:.2f} calls per trial, "
          f"{figures['table_rows']} rows")
    print(f"results table, one call per metric: {figures['old_table_s_scaled']:7.1f} s (scaled from {args.old_sample} runs: "
          f"{1000 * figures['old_per_run_s']:.0f} ms and {figures['old_calls_per_run']:.0f} calls per run)")
    print(f"read again, nothing changed:        {figures['read_again_s']:7.1f} s, {sum(figures['read_again_calls'].values())} calls")
    print(f"the driver's table, kept:           {figures['followed_table_s']:7.1f} s, "
          f"{sum(figures['followed_table_calls'].values())} calls ({figures['followed_report_us']:.0f} us per report kept)")
    print(f"a trial's lookup of its own run:    {figures['own_run_lookup_ms']:7.1f} ms (median of 20)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
