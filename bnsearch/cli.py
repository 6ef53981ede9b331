"""The command line; the only argument parsing. Every bad argument or spec is reported as one
line per field and exit code 2, before Ray or MLflow is touched.

    bnsearch run sweeps/placement.py [--dry-run] [--address ADDR] [--tracking-uri URI] [--storage PATH]
    bnsearch validate sweeps/*.py
    python sweeps/placement.py --dry-run        # the same as `bnsearch run`
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Sequence

from bnsearch.spec import SpecError, Sweep

DEFAULT_STORAGE = "bnsearch-results"
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
    storage = Path(args.storage)
    if storage.exists() and not storage.is_dir():
        problems.append(("--storage", f"must be a directory, {args.storage!r} is a file"))
    if problems:
        raise SpecError(problems)


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
    sweep.validate()

    from bnsearch import tracking, trainable  # Ray and MLflow load only after validation

    storage = Path(args.storage).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(storage)
    experiment = sweep.name + ("-dry-run" if args.dry_run else "")
    sweep_id = f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    address = None if args.address in (None, "local") else args.address
    print(f"bnsearch: sweep {sweep_id}: {len(sweep.arms())} arms x {sweep.budget.trials_per_arm} trials, "
          f"up to {sweep.budget.max_epochs} epochs each; tracking {tracking_uri}", flush=True)
    outcome = trainable.run_search(
        sweep.replace(name=experiment), sweep_id=sweep_id, tracking_uri=tracking_uri, storage=str(storage),
        address=address, run_tags={"dry_run": str(args.dry_run).lower()},
        spec_record={**sweep.to_dict(), "dry_run": args.dry_run}, versions=versions(),
    )
    print(summary(outcome))
    return 0 if all(t["status"] != "failed" for t in outcome.trials) else 1


def summary(outcome) -> str:
    counts: dict[str, dict[str, int]] = {}
    for trial in outcome.trials:
        arm = counts.setdefault(trial["arm"], {})
        arm[trial["status"]] = arm.get(trial["status"], 0) + 1
    lines = [f"\nSweep {outcome.sweep_id}: {len(outcome.trials)} trials, {outcome.epochs} epochs, {outcome.wall_s:.0f} s wall time"]
    lines.append(f"{'arm':<24}{'trials':>7}{'best ' + outcome.metric:>22}  statuses")
    for arm, by_status in counts.items():
        best = outcome.best.get(arm)
        best_text = f"{best:.4f}" if best is not None else "-"
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
        lines.append(f"{arm:<24}{sum(by_status.values()):>7}{best_text:>22}  {statuses}")
    ui = outcome.tracking_uri if not outcome.tracking_uri.startswith("http") else None
    lines += [
        f"\nMLflow: experiment id {outcome.experiment_id}, parent run {outcome.parent_run_id} in {outcome.tracking_uri}",
        f"Tune results and checkpoints: {os.path.join(outcome.storage, outcome.sweep_id)}",
        (f"Open the MLflow UI: mlflow ui --backend-store-uri {ui} --host 127.0.0.1 --port 5000, "
         f"then http://127.0.0.1:5000/#/experiments/{outcome.experiment_id}/runs"
         if ui else f"Open the MLflow UI: {outcome.tracking_uri}/#/experiments/{outcome.experiment_id}/runs"),
    ]
    return "\n".join(lines)


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
    run.add_argument("--address", help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (default: start a local one)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite under --storage)")
    run.add_argument("--storage", default=DEFAULT_STORAGE, help=f"results directory: Tune runs, checkpoints, local MLflow store (default: ./{DEFAULT_STORAGE})")
    run.set_defaults(func=_run)
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
