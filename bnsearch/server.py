"""``bnsearch server``: a real ``mlflow server`` for a sweep's trials to log to, run as a child
process group so that stopping it stops all of it (killing only the parent leaves MLflow's job
consumers running). MLflow is started as a program, not imported: bnsearch.tracking stays its
only importer.

    bnsearch server                                   # SQLite under ./bnsearch-results, 127.0.0.1:5000
    bnsearch server --host 0.0.0.0 --backend-store-uri postgresql://... --artifacts-destination s3://...
    bnsearch server --auth                            # basic auth: admin / $MLFLOW_AUTH_ADMIN_PASSWORD
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bnsearch.spec import SpecError

AUTH_ENV = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
MIN_PASSWORD = 12  # MLflow refuses shorter admin passwords


def check_auth_environment(environ=os.environ) -> None:
    """Basic auth needs an admin password and a Flask secret key in the environment."""
    password = environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    if len(password) < MIN_PASSWORD:
        raise SpecError([("MLFLOW_AUTH_ADMIN_PASSWORD", f"--auth needs it set to {MIN_PASSWORD}+ characters"
                          f"{'' if not password else f', got {len(password)}'} (the admin user's password)")])
    if not environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        raise SpecError([("MLFLOW_FLASK_SERVER_SECRET_KEY", "--auth needs it set (a random string that signs sessions)")])


class MlflowServer:
    """``with MlflowServer(backend, artifacts) as server: server.url`` runs ``mlflow server``
    until the block ends. ``auth`` turns on MLflow's basic-auth app, its user store beside
    ``state_dir``."""

    def __init__(self, backend_store_uri: str, artifacts_destination: str, *, host: str = "127.0.0.1", port: int = 5000,
                 auth: bool = False, state_dir: str | Path = ".", start_timeout_s: float = 120):
        self.host, self.port, self.auth = host, port, auth
        self.state_dir = Path(state_dir).resolve()
        self.log_path = self.state_dir / f"mlflow-server-{port}.log"
        self.command = [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", artifacts_destination, "--host", host, "--port", str(port), "--workers", "2",
        ]
        if host not in ("127.0.0.1", "localhost"):
            # MLflow checks the Host header against name:port; behind a cluster's private address
            # the caller's name is not known in advance, and the network is what limits access.
            self.command += ["--allowed-hosts", "*"]
        if auth:
            self.command += ["--app-name", "basic-auth"]
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '::') else self.host}:{self.port}"

    def start(self) -> MlflowServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # A sweep's writers arrive together: MLflow's default pool (5 + 10 per worker, 30 s wait)
        # timed out under 64 writers on PostgreSQL; 2 workers x 40 stay under its 100 connections.
        env.setdefault("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "10")
        env.setdefault("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "30")
        if self.auth:
            check_auth_environment(env)
            config = self.state_dir / "basic_auth.ini"
            config.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{self.state_dir / 'basic_auth.db'}\nadmin_username = admin\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)  # its own process group, stopped as one
        deadline = time.monotonic() + self.start_timeout_s
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow server did not come up on {self.url} (log {self.log_path}):\n{tail}")
            time.sleep(0.5)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM the whole process group, SIGKILL whatever is left after ``timeout_s``."""
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and group_alive(self.process.pid):
                self.process.poll()  # reap the parent so it does not linger as a zombie
                time.sleep(0.2)
            if not group_alive(self.process.pid):
                break
        self.process.wait()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp
            return True
    return False


def serve(backend_store_uri: str, artifacts_destination: str, host: str, port: int, auth: bool, state_dir: Path) -> int:
    """Run the server in the foreground until SIGINT/SIGTERM, then stop its whole group."""
    server = MlflowServer(backend_store_uri, artifacts_destination, host=host, port=port, auth=auth, state_dir=state_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds through the finally below
    server.start()
    try:
        print(f"bnsearch: MLflow tracking server at {server.url} (log {server.log_path}); stop with Ctrl-C\n"
              f"  export MLFLOW_TRACKING_URI={server.url}", flush=True)
        while server.process.poll() is None:
            time.sleep(1)
        print(f"bnsearch: mlflow server exited with {server.process.returncode}; see {server.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
