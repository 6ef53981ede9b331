"""The command line; the only argument parsing. Every bad argument or spec is reported as one
line per field and exit code 2, before Ray or MLflow is touched.

    bnsearch run sweeps/placement.py [--dry-run] [--seeds N] [--phase search|replicate|report|all]
                                     [--address ADDR] [--tracking-uri URI] [--storage PATH] [--sweep-id ID]
    bnsearch report EXPERIMENT [--sweep-id ID] [--tracking-uri URI] [--storage PATH]
    bnsearch validate sweeps/*.py
    bnsearch inspect sweeps/placement.py [--dry-run]     # every arm's model, before anything trains
    bnsearch server [--host 127.0.0.1] [--port 5000] [--backend-store-uri URI] [--artifacts-destination URI] [--auth]
    python sweeps/placement.py --dry-run        # the same as `bnsearch run`
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from bnsearch import session
from bnsearch.session import DEFAULT_STORAGE
from bnsearch.spec import SpecError, Sweep

PHASE_CHOICES = {"search": ("search",), "replicate": ("replicate",), "report": ("report",),
                 "all": ("search", "replicate", "report")}
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def load_sweep(path: str, dry_run: bool = False) -> Sweep:
    """Import a sweep file and call its ``get_sweep(dry_run)``."""
    file = Path(path)
    if not file.is_file():
        raise SpecError([("sweep", f"no such sweep file: {path}")])
    module_spec = importlib.util.spec_from_file_location(f"bnsearch_sweep_{file.stem}", file)
    if module_spec is None:
        raise SpecError([("sweep", f"{path} is not a Python file")])
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:  # in the sweep file, or in a module it imports: name the one it is in
        raise SpecError([("sweep", f"{error.filename or path}:{error.lineno}: syntax error: {error.msg}")]) from None
    except SpecError:
        raise
    except Exception as error:  # the file's own code failed: say where, not a traceback
        raise SpecError([("sweep", f"{path}{_line_in(error, file)}: loading it raised {type(error).__name__}: {error}")]) from None
    if not callable(getattr(module, "get_sweep", None)):
        raise SpecError([("sweep", f"{path} defines no get_sweep(dry_run) function")])
    try:
        sweep = module.get_sweep(dry_run)
    except SpecError:
        raise
    except Exception as error:
        raise SpecError([("sweep", f"{path}{_line_in(error, file)}: get_sweep() raised {type(error).__name__}: {error}")]) from None
    if not isinstance(sweep, Sweep):
        raise SpecError([("sweep", f"{path}: get_sweep() must return a bnsearch.spec.Sweep, got {type(sweep).__name__}")])
    return sweep


def _line_in(error: BaseException, file: Path) -> str:
    """``:N``, the last line of ``file`` in the error's traceback, or ""."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == file.resolve()]
    return f":{frames[-1].lineno}" if frames else ""


def check_arguments(args: argparse.Namespace) -> None:
    problems = []
    if args.tracking_uri and not re.match(rf"({'|'.join(TRACKING_SCHEMES)})(\+\w+)?:", args.tracking_uri):
        problems.append(("--tracking-uri", f"must start with one of {', '.join(s + ':' for s in TRACKING_SCHEMES)}, got {args.tracking_uri!r}"))
    if args.address and not (args.address in ("auto", "local") or re.fullmatch(r"(ray://)?[\w.\-]+:\d+", args.address)):
        problems.append(("--address", f"must be 'auto', 'local', HOST:PORT or ray://HOST:PORT, got {args.address!r}"))
    storage = session.storage_of(args.storage)
    if isinstance(storage, Path) and storage.exists() and not storage.is_dir():
        problems.append(("--storage", f"must be a directory, {str(storage)!r} is a file"))
    if args.sweep_id and "search" in PHASE_CHOICES[args.phase]:
        problems.append(("--sweep-id", f"continues a recorded sweep, so it goes with --phase replicate or report, not {args.phase}"))
    if args.seeds is not None and args.seeds < 2:
        problems.append(("--seeds", f"must be a whole number >= 2 (statistics need two seeds per arm), got {args.seeds}"))
    if problems:
        raise SpecError(problems)


def _run(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep, dry_run=args.dry_run)
    check_arguments(args)
    if args.seeds is not None:
        # One look at N seeds: beyond a plan already recorded, the added seeds are exploratory.
        looks = tuple(n for n in sweep.budget.looks if n < args.seeds) + (args.seeds,) if sweep.budget.looks else ()
        sweep = sweep.replace(budget=dataclasses.replace(sweep.budget, seeds=args.seeds, looks=looks))
    sweep.validate()
    return session.run(sweep, PHASE_CHOICES[args.phase], dry_run=args.dry_run, storage=session.storage_of(args.storage),
                       tracking_uri=args.tracking_uri, address=args.address, sweep_id=args.sweep_id, verbose=args.verbose)


def _report(args: argparse.Namespace) -> int:
    return session.report(args.experiment, storage=session.storage_of(args.storage), tracking_uri=args.tracking_uri,
                          sweep_id=args.sweep_id)


def _server(args: argparse.Namespace) -> int:
    from bnsearch import server

    if not 0 < args.port < 65536:
        raise SpecError([("--port", f"must be a TCP port, 1..65535, got {args.port}")])
    if args.auth:
        server.check_auth_environment()
    local = session.local_dir(session.storage_of(args.storage))
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


def _inspect(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep, dry_run=args.dry_run)
    sweep.validate()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices are not what was asked
    from bnsearch import inspection  # TensorFlow: it builds the models

    print(inspection.describe(sweep))
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
    run.add_argument("--verbose", action="store_true",
                     help="print Tune's per-trial output instead of the compact progress view (without it, that output goes to tune.log in the sweep's results)")
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
    inspect = commands.add_parser("inspect", help="print every arm's model as it will be trained: placement sites, norm layers, parameters")
    inspect.add_argument("sweep")
    inspect.add_argument("--dry-run", action="store_true", help="the sweep's dry-run size")
    inspect.set_defaults(func=_inspect)
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
