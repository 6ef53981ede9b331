"""A sweep's session on the driver: where it is stored, its MLflow store and parent run, resuming
a sweep whose driver died, the checks that only the driver's machine can make, and the phases.

The command line (:mod:`bnsearch.cli`) parses and validates; everything a run or a report does
from there on happens here. Every problem found before a trial starts is a
:class:`~bnsearch.spec.SpecError`: one line per cause, exit code 2, nothing recorded touched.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import socket
import tempfile
import time
from importlib import metadata
from pathlib import Path

from bnsearch import data
from bnsearch.models.registry import is_import_path
from bnsearch.spec import SpecError, Sweep

DEFAULT_STORAGE = "bnsearch-results"
PACKAGES = ("bnsearch", "ray", "tensorflow", "keras", "optuna", "mlflow", "numpy", "pyarrow", "scipy")
ADDRESS_TIMEOUT_S = 5.0  # an --address that does not answer within this is reported, not waited for
TRAINING_PHASES = {"search", "replicate"}


def storage_of(value: str | None) -> str | Path:
    """``--storage``, else ``$BNSEARCH_STORAGE`` (what a cluster sets on every node), else
    ./bnsearch-results: a local directory, or a URI Tune writes to (s3://, gs://)."""
    value = value or os.environ.get("BNSEARCH_STORAGE") or DEFAULT_STORAGE
    return value if "://" in value else Path(value).resolve()


def local_dir(storage: str | Path) -> Path:
    """Where the local MLflow store and reports go: the storage directory, or ./bnsearch-results
    when Tune's storage is a URI."""
    return storage if isinstance(storage, Path) else Path(DEFAULT_STORAGE).resolve()


def driver_alive(tags: dict[str, str]) -> bool:
    """Whether the driver that tagged a sweep still runs. One on another host cannot be
    checked from here, so it counts as gone: resuming is the user's explicit rerun."""
    if tags.get("driver_host") != socket.gethostname():
        return False
    try:
        os.kill(int(tags.get("driver_pid", 0)) or -1, 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        pass
    return True


def versions() -> dict[str, str]:
    """Installed versions, read from package metadata so the driver imports no framework."""
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def preflight(sweep: Sweep, storage: str | Path, address: str | None, phases: tuple[str, ...]) -> None:
    """What only the driver's machine can check, before Ray starts or anything is recorded: the
    storage can be written, the Ray address answers, an offline dataset loads and splits, and a
    model of yours can be rewritten for every arm on it."""
    problems = []
    if isinstance(storage, Path):
        problem = _unwritable(storage)
        if problem:
            problems.append(("--storage", problem))
    trains = bool(TRAINING_PHASES & set(phases))
    if trains and address and address not in ("auto", "local"):  # auto: Ray itself says at once when none runs here
        host, port = address.removeprefix("ray://").rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S).close()
        except OSError as error:
            problems.append(("--address", f"no Ray cluster answers at {address} ({error.strerror or error}); start one "
                                          "with `ray start --head` or `ray up`, or leave --address out for a local one"))
    if trains:
        problem = data.check(sweep.dataset, dict(sweep.dataset_args))
        if problem:
            problems.append(("dataset", problem))
        elif is_import_path(sweep.model) and not data.needs_worker(sweep.dataset):
            from bnsearch import inspection  # TensorFlow, for a model of yours only: it is rewritten per arm here

            try:
                inspection.check_models(sweep)
            except SpecError as error:
                problems.extend(error.problems)
    if problems:
        raise SpecError(problems)


def _unwritable(storage: Path) -> str | None:
    """Why nothing can be written under ``storage`` (None: it can). Probes with a real file: the
    permission bits say nothing to root, a read-only file system does."""
    existing = next(p for p in (storage, *storage.parents) if p.exists())
    if not existing.is_dir():
        return f"{str(storage)!r} lies under {str(existing)!r}, which is a file, not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return f"cannot write under {str(existing)!r} ({error.strerror or error})"
    return None


def run(sweep: Sweep, chosen: tuple[str, ...], *, dry_run: bool, storage: str | Path, tracking_uri: str | None,
        address: str | None, sweep_id: str | None, verbose: bool = False) -> int:
    """Run the ``chosen`` phases of a validated sweep; the process's exit code."""
    preflight(sweep, storage, address, chosen)
    from bnsearch import phases, tracking  # MLflow loads only after validation

    local = local_dir(storage)
    flag = tracking_uri
    tracking_uri = tracking.resolve_tracking_uri(flag, local)
    unreachable = tracking.check_reachable(tracking_uri)
    if unreachable:  # fail now, not after Ray has started and MLflow's client has retried for minutes
        source = "--tracking-uri" if flag else "MLFLOW_TRACKING_URI"
        raise SpecError([(source, f"no MLflow server answers at {tracking_uri} ({unreachable}); start one with "
                                  "`bnsearch server` or point it at a running one")])
    experiment = sweep.name + ("-dry-run" if dry_run else "")
    sweep = sweep.replace(name=experiment)
    spec_record = {**sweep.to_dict(), "arms": list(sweep.arms()), "dry_run": dry_run,
                   "comparisons": [dataclasses.asdict(c) for c in sweep.declared_comparisons()]}
    if "search" in chosen:
        # The driver creates the store, experiment and parent run before any trial starts.
        local.mkdir(parents=True, exist_ok=True)
        tracker = tracking.SweepTracker(tracking_uri, experiment, artifact_root=tracking.local_artifact_root(tracking_uri, local))
        # The same command after a killed driver resumes its sweep (Tune restore, same MLflow runs).
        sweep_id = tracker.unfinished_sweep(spec_record, driver_alive)
        if sweep_id:
            print(f"bnsearch: resuming sweep {sweep_id}, whose driver stopped before it finished", flush=True)
        else:
            sweep_id = f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        tracker, sweep_id = existing_sweep(tracking_uri, local, experiment, sweep_id,
                                           "--phase", f"{chosen[0]} continues a sweep; run --phase search (or all) first")
    if TRAINING_PHASES & set(chosen) and data.needs_worker(sweep.dataset):
        from bnsearch import trainable  # Ray starts here: the phases need it

        trainable.check_dataset(sweep, address)  # before the parent run opens: a failure touches no record
    tracker.start_sweep(
        sweep_id,
        params={"model": sweep.model, "dataset": sweep.dataset, "metric": sweep.metric, "mode": sweep.mode,
                "arms": list(sweep.arms()), "trials_per_arm": sweep.budget.trials_per_arm,
                "max_epochs": sweep.budget.max_epochs, "sampler": sweep.budget.sampler,
                "early_stopping": sweep.budget.early_stopping, "search_seed": sweep.budget.search_seed},
        tags={"dry_run": str(dry_run).lower(), "driver_host": socket.gethostname(), "driver_pid": str(os.getpid())},
        artifacts={"spec.json": spec_record, "versions.json": versions()},
    )
    print(f"bnsearch: sweep {sweep_id}, phases {', '.join(chosen)}: {len(sweep.arms())} arms x "
          f"{sweep.budget.trials_per_arm} search trials, "
          + (f"up to {sweep.budget.seeds} replicate seeds (looks at {', '.join(map(str, sweep.budget.looks))}), "
             if sweep.budget.looks else f"{sweep.budget.seeds} replicate seeds, ") +
          f"up to {sweep.budget.max_epochs} epochs each; tracking {tracking_uri}", flush=True)
    ok = False
    try:
        ok = phases.run(sweep, chosen, tracker=tracker, sweep_id=sweep_id, storage=str(storage), spec_record=spec_record,
                        report_dir=local / sweep_id / "report",
                        address=address,
                        run_tags={"dry_run": str(dry_run).lower()}, verbose=verbose)
    finally:
        tracker.end_sweep(ok)
    tune_log = local / sweep_id / phases.TUNE_LOG
    print(where(tracking_uri, tracker.experiment_id, tracker.parent_run_id, f"{storage}/{sweep_id}",
                tune_log if tune_log.is_file() and not verbose else None))
    return 0 if ok else 1


def report(experiment: str, *, storage: str | Path, tracking_uri: str | None, sweep_id: str | None) -> int:
    """Rebuild a recorded sweep's report from MLflow alone."""
    from bnsearch import phases, tracking

    local = local_dir(storage)
    tracking_uri = tracking.resolve_tracking_uri(tracking_uri, local)
    tracker, sweep_id = existing_sweep(tracking_uri, local, experiment, sweep_id, "experiment")
    print(phases.make_report(tracker, tracker.read_json("spec.json"), local / sweep_id / "report"))
    print(where(tracking_uri, tracker.experiment_id, tracker.parent_run_id, f"{local}/{sweep_id}"))
    return 0


def existing_sweep(tracking_uri: str, storage: Path, experiment: str, sweep_id: str | None, field: str, hint: str = ""):
    """The tracker and sweep id of a recorded sweep, or a SpecError; creates nothing."""
    from bnsearch import tracking

    if tracking_uri == tracking.default_tracking_uri(storage) and not (storage / "mlflow.db").is_file():
        raise SpecError([(field, f"no MLflow store at {storage / 'mlflow.db'} (give --storage or --tracking-uri){'; ' + hint if hint else ''}")])
    try:
        tracker = tracking.SweepTracker(tracking_uri, experiment, create=False)
        return tracker, tracker.open_sweep(sweep_id)
    except LookupError as error:
        raise SpecError([(field, f"{error}{'; ' + hint if hint else ''}")]) from None


def where(tracking_uri: str, experiment_id: str, parent_run_id: str, results: str, tune_log: Path | None = None) -> str:
    runs = f"#/experiments/{experiment_id}/runs"
    ui = (f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000, then http://127.0.0.1:5000/{runs}"
          if not tracking_uri.startswith("http") else f"{tracking_uri}/{runs}")
    return "\n".join([
        f"\nMLflow: experiment id {experiment_id}, parent run {parent_run_id} in {tracking_uri}",
        f"Results, Tune runs and checkpoints: {results}*" + (f" (Tune's own output: {tune_log})" if tune_log else ""),
        f"Open the MLflow UI: {ui}",
    ])
