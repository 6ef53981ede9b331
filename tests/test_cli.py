import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnsearch import cli, session

ROOT = Path(__file__).resolve().parents[1]
BAD_SWEEP = '''
from bnsearch.spec import Sweep, LogUniform
def get_sweep(dry_run=False):
    return Sweep(name="bad", model="mlp", dataset="digits", scientific={"bn_placement": ("before",)},
                 nuisance={"learning_rate": LogUniform(-1.0, 0.1)})
'''


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bnsearch.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tracking-uri", "ftp://x"], "bnsearch: error: --tracking-uri: must start with one of"),
        (["--address", "not an address"], "bnsearch: error: --address: must be 'auto'"),
        (["--seeds", "1"], "bnsearch: error: --seeds: must be a whole number >= 2"),
        (["--sweep-id", "x"], "bnsearch: error: --sweep-id: continues a recorded sweep, so it goes with --phase replicate or report"),
    ],
)
def test_bad_arguments_exit_2_before_any_resource(tmp_path, args, message):
    result = run_cli("run", str(ROOT / "sweeps" / "bn_vs_none.py"), "--storage", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert not (tmp_path / "out").exists()  # no store, no Ray session, nothing written


def test_bad_spec_exits_2_with_the_field(tmp_path):
    (tmp_path / "bad.py").write_text(BAD_SWEEP)
    result = run_cli("run", "bad.py", "--storage", "out", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "bnsearch: error: nuisance.learning_rate: a log scale needs low > 0, got -1.0"
    assert not (tmp_path / "out").exists()


def test_missing_sweep_file_and_bad_flag(tmp_path):
    result = run_cli("run", "nowhere.py", cwd=tmp_path)
    assert result.returncode == 2 and "sweep: no such sweep file: nowhere.py" in result.stderr
    assert run_cli("run", "x.py", "--epochs", "3", cwd=tmp_path).returncode == 2  # argparse's own


def test_the_driver_never_imports_a_training_framework():
    code = (
        "import sys, bnsearch.cli, bnsearch.trainable, bnsearch.tracking, bnsearch.search\n"
        f"[bnsearch.cli.load_sweep(p, d).validate() for p in {[str(p) for p in (ROOT / 'sweeps').glob('*.py')]!r} for d in (0, 1)]\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_validate_command_checks_both_sizes(capsys):
    assert cli.main(["validate", str(ROOT / "sweeps" / "placement.py")]) == 0
    assert "placement.py: ok" in capsys.readouterr().out


def test_a_phase_that_continues_a_sweep_needs_one(tmp_path):
    result = run_cli("run", str(ROOT / "sweeps" / "bn_vs_none.py"), "--dry-run", "--phase", "replicate", "--storage", "out", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("bnsearch: error: --phase: no MLflow store at ")
    assert result.stderr.strip().endswith("; replicate continues a sweep; run --phase search (or all) first")
    assert not (tmp_path / "out" / "mlflow.db").exists()
    result = run_cli("run", str(ROOT / "sweeps" / "bn_vs_none.py"), "--phase", "sideways", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'sideways'" in result.stderr


def test_report_without_a_store_exits_2_and_creates_nothing(tmp_path):
    result = run_cli("report", "nothing-here", "--storage", "out", cwd=tmp_path)
    assert result.returncode == 2 and "bnsearch: error: experiment: no MLflow store at" in result.stderr
    assert not (tmp_path / "out").exists()


def test_storage_is_the_flag_else_bnsearch_storage_else_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNSEARCH_STORAGE", raising=False)
    assert session.storage_of(None) == tmp_path / session.DEFAULT_STORAGE
    monkeypatch.setenv("BNSEARCH_STORAGE", "s3://bucket/results")  # what a cluster sets on every node
    assert session.storage_of(None) == "s3://bucket/results" and session.storage_of("here") == tmp_path / "here"
    # Tune writes to the URI; the local store and reports stay in a local directory
    assert session.local_dir(session.storage_of(None)) == tmp_path / session.DEFAULT_STORAGE


def test_a_sweep_is_resumed_only_when_its_driver_is_gone_and_its_spec_unchanged(tmp_path):
    import os
    import socket

    from bnsearch import tracking

    spec = {"name": "s", "arms": ["none", "before"], "budget": {"seeds": 3}}
    tracker = tracking.SweepTracker(tracking.default_tracking_uri(tmp_path), "s")
    tracker.start_sweep("s-1", params={}, tags={"driver_host": socket.gethostname(), "driver_pid": str(os.getpid())},
                        artifacts={"spec.json": spec})
    assert session.driver_alive(tracker.tags())  # this process "is" the driver: still running, not resumable
    assert tracker.unfinished_sweep(spec, session.driver_alive) is None
    gone = lambda tags: False  # noqa: E731
    assert tracker.unfinished_sweep(spec, gone) == "s-1"
    assert tracker.unfinished_sweep({**spec, "arms": ["none"]}, gone) is None  # a changed sweep starts afresh
    tracker.end_sweep(ok=False)  # a driver that ended, even with an error, is not resumed
    assert tracker.unfinished_sweep(spec, gone) is None


def test_a_driver_on_another_host_or_with_a_dead_pid_counts_as_gone():
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    assert not session.driver_alive({"driver_host": socket.gethostname(), "driver_pid": dead})
    assert not session.driver_alive({"driver_host": "elsewhere", "driver_pid": "1"})
    assert not session.driver_alive({})


# --- every bad input stopped on the driver: one line, exit 2, no Ray left, within seconds ----------

SWEEP = '''
from bnsearch.spec import Budget, Sweep
def get_sweep(dry_run=False):
    return Sweep(name="tiny", model="mlp", dataset={dataset!r}, dataset_args={args!r},
                 scientific={{"bn_placement": ("none", "before")}}, budget=Budget(trials_per_arm=1, max_epochs=1, seeds=2))
'''


def ray_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (the run's own Ray temp dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(text)
    return found


@pytest.mark.parametrize("case", ["not_a_sweep", "syntax_error", "syntax_error_in_an_import", "raises_on_load", "raises_in_get_sweep", "unreachable_address",
                                  "missing_dataset_directory", "no_training_data", "unwritable_storage", "worker_only_dataset"])
def test_each_bad_input_is_one_line_and_exit_2_with_no_ray_left(tmp_path, case, free_port):
    import tempfile
    import time

    (tmp_path / "blocker").write_text("a file where a directory would go")
    files = {
        "not_a_sweep": ("notes.py", "print('hello')\n", "notes.py defines no get_sweep(dry_run) function"),
        "syntax_error": ("broken.py", "def get_sweep(dry_run=False):\n    return Sweep(\n\nx = (]\n", "broken.py:4: syntax error"),
        "syntax_error_in_an_import": ("uses.py", "import helper\n", "helper.py:2: syntax error"),
        "raises_on_load": ("raises.py", "import json\njson.loads('{')\n", "raises.py:2: loading it raised JSONDecodeError"),
        "raises_in_get_sweep": ("late.py", "def get_sweep(dry_run=False):\n    return 1 / 0\n",
                                "late.py:2: get_sweep() raised ZeroDivisionError: division by zero"),
    }
    (tmp_path / "helper.py").write_text("x = 1\ny = (]\n")
    args, expected = [], ""
    if case in files:
        name, text, expected = files[case]
        (tmp_path / name).write_text(text)
    else:
        dataset, options = {"missing_dataset_directory": ("mnist_idx", {"path": str(tmp_path / "nowhere")}),
                            "no_training_data": ("digits", {"test_fraction": 0.9995}),
                            "worker_only_dataset": ("mnist", {})}.get(case, ("digits", {}))
        name = "tiny.py"
        (tmp_path / name).write_text(SWEEP.format(dataset=dataset, args=options))
        expected = {"unreachable_address": "--address: no Ray cluster answers at 127.0.0.1:",
                    "missing_dataset_directory": "dataset: mnist_idx cannot be loaded: ",
                    "no_training_data": "dataset: digits with {'test_fraction': 0.9995} leaves 0 training",
                    "unwritable_storage": "--storage: ",
                    "worker_only_dataset": "dataset: mnist could not be loaded on a worker: "}[case]
        if case == "unreachable_address":
            args = ["--address", f"127.0.0.1:{free_port()}"]
    storage = tmp_path / ("blocker/results" if case == "unwritable_storage" else "results")
    ray_dir = tempfile.mkdtemp(prefix="bnr", dir="/tmp")  # short: Ray's socket paths must fit
    env = {**os.environ, "RAY_TMPDIR": ray_dir, "KERAS_HOME": str(tmp_path / "keras")}  # no cached downloads
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bnsearch.cli", "run", name, "--storage", str(storage), *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    took = time.perf_counter() - start
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert lines == [lines[-1]] and lines[0].startswith("bnsearch: error: ") and expected in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert took < (90 if case == "worker_only_dataset" else 20)  # the worker case starts Ray and a TF worker
    deadline = time.time() + 10
    while ray_processes(ray_dir) and time.time() < deadline:
        time.sleep(0.5)
    assert not ray_processes(ray_dir)
    if case != "worker_only_dataset":
        assert not (storage / "mlflow.db").exists()  # stopped before anything was recorded
    else:  # the store exists (Ray and the store start before a worker can try), but no run was opened
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
