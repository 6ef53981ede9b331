"""`bnsearch server` and tracking through a real `mlflow server`: bound to loopback, stopped as a
whole process group, basic auth, 16 concurrent writers, and a sweep that outlives an outage."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from bnsearch import server, tracking
from bnsearch.cli import load_sweep
from bnsearch.identity import TrialId

ROOT = Path(__file__).resolve().parents[1]


def non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent; it only picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


@pytest.fixture
def mlflow_server(tmp_path, free_port):
    with server.MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"), port=free_port(),
                             state_dir=tmp_path) as running:
        yield running


def test_bnsearch_server_serves_on_loopback_and_stops_its_whole_process_group(tmp_path, free_port):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bnsearch.cli", "server", "--port", str(port), "--storage", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:" in process.stdout.readline() + process.stdout.readline()
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).ok
        assert (tmp_path / "mlflow.db").is_file()  # SQLite under --storage by default
        ip = non_loopback_ip()
        if ip:
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://{ip}:{port}/health", timeout=5)
        (server_group,) = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
                           for pid in children(process.pid)}
        assert len([pid for pid in all_pids() if group_of(pid) == server_group]) > 2  # MLflow spawns workers and consumers
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    assert not server.group_alive(server_group)  # nothing of it left: no orphaned job consumers


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def group_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    found = []
    for child in all_pids():
        try:
            if int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(child)
        except (OSError, IndexError):
            pass
    return found


@pytest.mark.parametrize("environment, field", [
    ({}, "MLFLOW_AUTH_ADMIN_PASSWORD"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "too-short"}, "MLFLOW_AUTH_ADMIN_PASSWORD"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "long-enough-password"}, "MLFLOW_FLASK_SERVER_SECRET_KEY"),
])
def test_auth_without_its_secrets_exits_2_naming_the_variable(tmp_path, environment, field):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | environment
    result = subprocess.run([sys.executable, "-m", "bnsearch.cli", "server", "--auth", "--storage", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith(f"bnsearch: error: {field}:")
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("given_by", ["--tracking-uri", "MLFLOW_TRACKING_URI"])
def test_a_tracking_server_down_at_start_fails_the_sweep_at_once(tmp_path, free_port, given_by):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    flag = ["--tracking-uri", url] if given_by == "--tracking-uri" else []
    env.update({} if flag else {"MLFLOW_TRACKING_URI": url})
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bnsearch.cli", "run", str(ROOT / "tests" / "sweeps" / "tiny_mlp.py"),
                             "--storage", str(tmp_path / "out"), *flag], capture_output=True, text=True, env=env, timeout=120)
    seconds = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"bnsearch: error: {given_by}: no MLflow server answers at {url}")
    assert seconds < 60 and not (tmp_path / "out").exists()  # no Ray, no store, no retrying for minutes
    print(f"tracking server down at start ({given_by}): exit 2 after {seconds:.1f} s")


def test_auth_mode_refuses_anonymous_writes_and_accepts_the_admin(tmp_path, monkeypatch, free_port):
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "a-test-password-of-some-length")
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "test-secret")
    with server.MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"), port=free_port(),
                             auth=True, state_dir=tmp_path) as running:
        create = f"{running.url}/api/2.0/mlflow/experiments/create"
        # generous timeouts: the first requests set up the auth store, slow on a busy machine
        assert requests.post(create, json={"name": "anonymous"}, timeout=60).status_code == 401
        admin = ("admin", "a-test-password-of-some-length")
        assert requests.post(create, json={"name": "admin"}, auth=admin, timeout=60).ok
        assert requests.post(create, json={"name": "wrong"}, auth=("admin", "not-the-password"), timeout=60).status_code == 401


EPOCHS, METRICS, WRITERS, WRITER_PROCESSES = 10, 5, 64, 4


def write_trial(uri: str, experiment_id: str, parent_run_id: str, index: int) -> None:
    run = tracking.TrialRun.open(uri, experiment_id, parent_run_id, TrialId("load", "search", "a", index, index), params={"i": index})
    for epoch in range(1, EPOCHS + 1):
        run.log_epoch(epoch, {f"m{k}": index + epoch / 100 + k for k in range(METRICS)})
        time.sleep(0.01)  # an epoch's work: batches go out as they would, not all at once
    run.finish()


def write_trials(uri: str, experiment_id: str, parent_run_id: str, indices: list[int]) -> None:
    """One process's writers, a thread each (64 processes importing MLflow would swamp 2 CPUs;
    the server sees 64 concurrent clients either way)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(indices)) as writers:
        list(writers.map(lambda i: write_trial(uri, experiment_id, parent_run_id, i), indices))


@pytest.fixture(params=["sqlite", "postgresql"])
def team_server(request, tmp_path, free_port):
    """An MLflow server on SQLite (one machine) or on PostgreSQL (a team, a cluster head)."""
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres")("writers")
    with server.MlflowServer(backend, str(tmp_path / "artifacts"), port=free_port(), state_dir=tmp_path) as running:
        yield request.param, backend, running


def stored_metric_rows(backend_uri: str) -> int:
    """Every metric value the database holds, counted in it (one query, not one request per metric)."""
    query = "SELECT count(*) FROM metrics"
    if backend_uri.startswith("sqlite:///"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(backend_uri.removeprefix("sqlite:///"))) as db:
            return db.execute(query).fetchone()[0]
    import psycopg

    with psycopg.connect(backend_uri) as db:
        return db.execute(query).fetchone()[0]


def test_64_concurrent_writers_lose_nothing_and_read_back_in_one_request_per_trial(team_server, monkeypatch):
    backend, backend_uri, mlflow_server = team_server
    sweep = tracking.SweepTracker(mlflow_server.url, "load")  # the driver creates experiment and parent first
    sweep.start_sweep("load", params={}, tags={}, artifacts={})
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with context.Pool(WRITER_PROCESSES) as pool:
        pool.starmap(write_trials, [(mlflow_server.url, sweep.experiment_id, sweep.parent_run_id, list(range(WRITERS))[p::WRITER_PROCESSES])
                                    for p in range(WRITER_PROCESSES)])
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    reads = []
    read_artifact, read_history = tracking.store.read_artifact, tracking.store.read_history
    monkeypatch.setattr(tracking.store, "read_artifact", lambda *args: reads.append("file") or read_artifact(*args))
    monkeypatch.setattr(tracking.store, "read_history", lambda *args: reads.append("per metric") or read_history(*args))
    records = sweep.trial_records()
    read_s = time.perf_counter() - start
    assert reads == ["file"] * WRITERS  # each trial's history from its file, through the server
    assert sorted(r["params"]["i"] for r in records) == list(range(WRITERS))
    for record in records:
        i = record["params"]["i"]
        assert set(record["history"]) == {f"m{k}" for k in range(METRICS)}
        for k in range(METRICS):
            history = record["history"][f"m{k}"]
            assert history == {epoch: pytest.approx(i + epoch / 100 + k) for epoch in range(1, EPOCHS + 1)}
    rows = stored_metric_rows(backend_uri)
    assert rows == WRITERS * EPOCHS * METRICS  # each value once: retried batches were not stored twice
    print(f"\n{backend}: {WRITERS} concurrent writers x {EPOCHS} epochs x {METRICS} metrics: {rows} values stored, none lost or "
          f"doubled; written in {write_s:.1f} s, read back in {read_s:.2f} s")


def test_bnsearch_server_takes_a_postgresql_uri(postgres, tmp_path, free_port):
    """`bnsearch server --backend-store-uri postgresql://...`: what the runs log lands in that database."""
    import psycopg

    uri, port = postgres("cli"), free_port()
    process = subprocess.Popen([sys.executable, "-m", "bnsearch.cli", "server", "--port", str(port), "--storage", str(tmp_path),
                                "--backend-store-uri", uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in process.stdout.readline() + process.stdout.readline()
        tracking.SweepTracker(f"http://127.0.0.1:{port}", "team-sweep")
        with psycopg.connect(uri) as db, db.cursor() as cursor:
            cursor.execute("SELECT name FROM experiments")
            assert ("team-sweep",) in cursor.fetchall()
        assert not (tmp_path / "mlflow.db").exists()  # no SQLite store beside it
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_metrics_held_back_by_an_outage_are_sent_later_and_survive_a_checkpoint(tmp_path, free_port):
    port = free_port()
    backend, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts")
    first = server.MlflowServer(backend, artifacts, port=port, state_dir=tmp_path).start()
    sweep = tracking.SweepTracker(first.url, "outage")
    sweep.start_sweep("outage", params={}, tags={}, artifacts={})
    run = tracking.TrialRun.open(first.url, sweep.experiment_id, sweep.parent_run_id, TrialId("outage", "search", "a", 0, 0))
    run.log_epoch(1, {"loss": 1.0})
    run.flush(timeout_s=30)
    first.stop()
    start = time.monotonic()
    run.log_epoch(2, {"loss": 0.5})  # the server is gone: held back, training goes on
    assert time.monotonic() - start < 30 and len(run.pending) == 1
    run.save_pending(tmp_path)  # ... and a checkpoint carries what is held back
    with run._changed:  # its process dies here: nothing more is sent from it
        run.pending.clear()
        run._closed = True
        run._changed.notify_all()
    tracking.trial._UNFINISHED.discard(run)  # ... so its exit handler never runs either
    resumed = tracking.TrialRun(run.client, run.run)
    resumed.load_pending(tmp_path)
    with server.MlflowServer(backend, artifacts, port=port, state_dir=tmp_path):
        resumed.log_epoch(3, {"loss": 0.25})
        resumed.finish(timeout_s=60)
        history = MlflowClient(first.url).get_metric_history(run.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_a_sweep_goes_on_through_an_mlflow_outage_and_loses_no_epoch(tmp_path, free_port):
    sweep_file = ROOT / "tests" / "sweeps" / "packed_mlp.py"
    epochs = load_sweep(str(sweep_file), dry_run=True).budget.max_epochs
    port = free_port()
    backend, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts")
    mlflow_server = server.MlflowServer(backend, artifacts, port=port, state_dir=tmp_path).start()
    url = mlflow_server.url
    sweep = subprocess.Popen([sys.executable, str(sweep_file), "--dry-run", "--phase", "search",
                              "--tracking-uri", url, "--storage", str(tmp_path / "results")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = MlflowClient(url)
        deadline = time.monotonic() + 300
        while not any(r.data.metrics.get("epoch", 0) >= 1 for r in child_runs(client)):
            assert sweep.poll() is None and time.monotonic() < deadline, "no trial logged an epoch"
            time.sleep(0.2)
        mlflow_server.stop(timeout_s=0)  # down at once (SIGKILL), while the first trials still have epochs to train
        down_at = time.time()
        time.sleep(20)
        up_at = time.time()
        mlflow_server.start()
        output, _ = sweep.communicate(timeout=420)
        assert sweep.returncode == 0, output[-4000:]
        runs = child_runs(client)
        keys = [r.data.tags["trial_key"] for r in runs]
        assert len(keys) == len(set(keys)) == 4 and {r.info.status for r in runs} == {"FINISHED"}
        during_outage = 0
        for run in runs:
            history = client.get_metric_history(run.info.run_id, "val_accuracy")
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), run.data.tags["trial_key"]  # every epoch, once
            during_outage += sum(down_at * 1000 < m.timestamp < up_at * 1000 for m in history)
        assert during_outage > 0  # epochs were trained (and timestamped) while MLflow was down
        print(f"outage: MLflow down {up_at - down_at:.0f} s mid-sweep; {during_outage} epochs trained meanwhile; "
              f"{len(runs)} trials x {epochs} epochs all in MLflow, all FINISHED")
    finally:
        if sweep.poll() is None:
            sweep.kill()
        mlflow_server.stop()


def child_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("packed_mlp-dry-run")
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if "trial_key" in r.data.tags]
