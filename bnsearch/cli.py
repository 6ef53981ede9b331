"""The command line; the only argument parsing. Every bad argument or spec is reported as one
line per field and exit code 2, before Ray or MLflow is touched.

    bnsearch run sweeps/placement.py [--dry-run] [--seeds N] [--phase search|replicate|report|all]
                                     [--address ADDR] [--tracking-uri URI] [--storage PATH] [--sweep-id ID]
    bnsearch report EXPERIMENT [--sweep-id ID] [--tracking-uri URI] [--storage PATH]
    bnsearch validate sweeps/*.py
    bnsearch server [--host 127.0.0.1] [--port 5000] [--backend-store-uri URI] [--artifacts-destination URI] [--auth]
    python sweeps/placement.py --dry-run        # the same as `bnsearch run`
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from bnsearch.spec import SpecError, Sweep

DEFAULT_STORAGE = "bnsearch-results"
PHASE_CHOICES = {"search": ("search",), "replicate": ("replicate",), "report": ("report",),
                 "all": ("search", "replicate", "report")}
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
PACKAGES = ("bnsearch", "ray", "tensorflow", "keras", "optuna", "mlflow", "numpy", "pyarrow", "scipy")


def load_sweep(path: str, dry_run: bool = False) -> Sweep:
    """Import a sweep file and call its ``get_sweep(dry_run)``."""
    file = Path(path)
    if not file.is_file():
        raise SpecError([("sweep", f"no such sweep file: {path}")])
    module_spec = importlib.util.spec_from_file_location(f"bnsearch_sweep_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_sweep", None)):
        raise SpecError([("sweep", f"{path} defines no get_sweep(dry_run) function")])
    sweep = module.get_sweep(dry_run)
    if not isinstance(sweep, Sweep):
        raise SpecError([("sweep", f"{path}: get_sweep() must return a bnsearch.spec.Sweep, got {type(sweep).__name__}")])
    return sweep


def check_arguments(args: argparse.Namespace) -> None:
    problems = []
    if args.tracking_uri and not re.match(rf"({'|'.join(TRACKING_SCHEMES)})(\+\w+)?:", args.tracking_uri):
        problems.append(("--tracking-uri", f"must start with one of {', '.join(s + ':' for s in TRACKING_SCHEMES)}, got {args.tracking_uri!r}"))
    if args.address and not (args.address in ("auto", "local") or re.fullmatch(r"(ray://)?[\w.\-]+:\d+", args.address)):
        problems.append(("--address", f"must be 'auto', 'local', HOST:PORT or ray://HOST:PORT, got {args.address!r}"))
    storage = storage_of(args.storage)
    if isinstance(storage, Path) and storage.exists() and not storage.is_dir():
        problems.append(("--storage", f"must be a directory, {str(storage)!r} is a file"))
    if args.sweep_id and "search" in PHASE_CHOICES[args.phase]:
        problems.append(("--sweep-id", f"continues a recorded sweep, so it goes with --phase replicate or report, not {args.phase}"))
    if args.seeds is not None and args.seeds < 2:
        problems.append(("--seeds", f"must be a whole number >= 2 (statistics need two seeds per arm), got {args.seeds}"))
    if problems:
        raise SpecError(problems)


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


def _run(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep, dry_run=args.dry_run)
    check_arguments(args)
    if args.seeds is not None:
        # One look at N seeds: beyond a plan already recorded, the added seeds are exploratory.
        looks = tuple(n for n in sweep.budget.looks if n < args.seeds) + (args.seeds,) if sweep.budget.looks else ()
        sweep = sweep.replace(budget=dataclasses.replace(sweep.budget, seeds=args.seeds, looks=looks))
    sweep.validate()

    from bnsearch import phases, tracking  # MLflow loads only after validation

    storage = storage_of(args.storage)
    local = local_dir(storage)
    tracking_uri = tracking.resolve_tracking_uri(args.tracking_uri, local)
    unreachable = tracking.check_reachable(tracking_uri)
    if unreachable:  # fail now, not after Ray has started and MLflow's client has retried for minutes
        source = "--tracking-uri" if args.tracking_uri else "MLFLOW_TRACKING_URI"
        raise SpecError([(source, f"no MLflow server answers at {tracking_uri} ({unreachable}); start one with "
                                  "`bnsearch server` or point it at a running one")])
    experiment = sweep.name + ("-dry-run" if args.dry_run else "")
    sweep = sweep.replace(name=experiment)
    chosen = PHASE_CHOICES[args.phase]
    spec_record = {**sweep.to_dict(), "arms": list(sweep.arms()), "dry_run": args.dry_run,
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
        tracker, sweep_id = existing_sweep(tracking_uri, local, experiment, args.sweep_id,
                                           "--phase", f"{args.phase} continues a sweep; run --phase search (or all) first")
    tracker.start_sweep(
        sweep_id,
        params={"model": sweep.model, "dataset": sweep.dataset, "metric": sweep.metric, "mode": sweep.mode,
                "arms": list(sweep.arms()), "trials_per_arm": sweep.budget.trials_per_arm,
                "max_epochs": sweep.budget.max_epochs, "sampler": sweep.budget.sampler,
                "early_stopping": sweep.budget.early_stopping, "search_seed": sweep.budget.search_seed},
        tags={"dry_run": str(args.dry_run).lower(), "driver_host": socket.gethostname(), "driver_pid": str(os.getpid())},
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
                        address=args.address,
                        run_tags={"dry_run": str(args.dry_run).lower()})
    finally:
        tracker.end_sweep(ok)
    print(where(tracking_uri, tracker.experiment_id, tracker.parent_run_id, f"{storage}/{sweep_id}"))
    return 0 if ok else 1


def _report(args: argparse.Namespace) -> int:
    from bnsearch import phases, tracking

    local = local_dir(storage_of(args.storage))
    tracking_uri = tracking.resolve_tracking_uri(args.tracking_uri, local)
    tracker, sweep_id = existing_sweep(tracking_uri, local, args.experiment, args.sweep_id, "experiment")
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


def where(tracking_uri: str, experiment_id: str, parent_run_id: str, results: str) -> str:
    runs = f"#/experiments/{experiment_id}/runs"
    ui = (f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000, then http://127.0.0.1:5000/{runs}"
          if not tracking_uri.startswith("http") else f"{tracking_uri}/{runs}")
    return "\n".join([
        f"\nMLflow: experiment id {experiment_id}, parent run {parent_run_id} in {tracking_uri}",
        f"Results, Tune runs and checkpoints: {results}*",
        f"Open the MLflow UI: {ui}",
    ])


def _server(args: argparse.Namespace) -> int:
    from bnsearch import server

    if not 0 < args.port < 65536:
        raise SpecError([("--port", f"must be a TCP port, 1..65535, got {args.port}")])
    if args.auth:
        server.check_auth_environment()
    local = local_dir(storage_of(args.storage))
    backend = args.backend_store_uri or f"sqlite:///{local / 'mlflow.db'}"
    if not re.match(rf"({'|'.join(TRACKING_SCHEMES)})(\+\w+)?:", backend) or backend.startswith("http"):
        raise SpecError([("--backend-store-uri", f"must be a database URI (sqlite:, postgresql:, mysql:, mssql:), got {backend!r}")])
    return server.serve(backend, args.artifacts_destination or str(local / "artifacts"), args.host, args.port, args.auth, local)


def _validate(args: argparse.Namespace) -> int:
    for path in args.sweeps:
        for dry_run in (False, True):
            load_sweep(path, dry_run).validate()
        print(f"{path}: ok")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bnsearch", description="Fair, tracked, statistically tested BatchNorm sweeps.")
    commands = p.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a sweep file")
    run.add_argument("sweep", help="a sweep file, e.g. sweeps/placement.py")
    run.add_argument("--dry-run", action="store_true", help="same code path, tiny budget, offline dataset")
    run.add_argument("--address", help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT; local always starts a new one "
                     "(default: the cluster running on this machine, as under ray submit, else a new local one)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite under --storage)")
    run.add_argument("--storage", help=f"results directory or URI (s3://...): Tune runs, checkpoints, local MLflow store (default: $BNSEARCH_STORAGE, else ./{DEFAULT_STORAGE})")
    run.add_argument("--seeds", type=int, help="replicate seeds per arm (default: the sweep's budget.seeds); seeds beyond "
                                               "a sweep's recorded plan are reported as exploratory")
    run.add_argument("--phase", choices=tuple(PHASE_CHOICES), default="all",
                     help="search, replicate or report (these two continue the latest sweep, or --sweep-id), or all (default)")
    run.add_argument("--sweep-id", help="the sweep to continue with --phase replicate/report (default: the latest)")
    run.set_defaults(func=_run)
    report = commands.add_parser("report", help="rebuild a sweep's report from MLflow alone")
    report.add_argument("experiment", help="MLflow experiment name, e.g. bn_vs_none or bn_vs_none-dry-run")
    report.add_argument("--sweep-id", help="which sweep of the experiment (default: the latest)")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite under --storage)")
    report.add_argument("--storage", help=f"where the local store is and the report is written (default: $BNSEARCH_STORAGE, else ./{DEFAULT_STORAGE})")
    report.set_defaults(func=_report)
    serve = commands.add_parser("server", help="run an MLflow tracking server for sweeps to log to (stops its whole process group on exit)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 only inside a private network)")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--backend-store-uri", help="database URI (default: SQLite mlflow.db under --storage)")
    serve.add_argument("--artifacts-destination", help="where artifacts go, e.g. s3://bucket/mlflow (default: artifacts/ under --storage)")
    serve.add_argument("--storage", help=f"local directory for the default store, artifacts and logs (default: $BNSEARCH_STORAGE, else ./{DEFAULT_STORAGE})")
    serve.add_argument("--auth", action="store_true",
                       help="basic auth: user admin, password $MLFLOW_AUTH_ADMIN_PASSWORD (12+ characters), needs $MLFLOW_FLASK_SERVER_SECRET_KEY")
    serve.set_defaults(func=_server)
    validate = commands.add_parser("validate", help="check sweep files (full and dry-run sizes) without running them")
    validate.add_argument("sweeps", nargs="+")
    validate.set_defaults(func=_validate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as error:
        for name, why in error.problems:
            print(f"bnsearch: error: {name}: {why}", file=sys.stderr)
        return 2


def run_file(path: str) -> None:
    """What a sweep file's ``__main__`` calls: ``python sweeps/x.py ARGS`` = ``bnsearch run sweeps/x.py ARGS``."""
    sys.exit(main(["run", path, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
