import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "BNSEARCH_CACHE" not in os.environ:  # generated datasets cached for this session only, never in ~/.cache
    os.environ["BNSEARCH_CACHE"] = tempfile.mkdtemp(prefix="bnsearch-cache-")
    atexit.register(shutil.rmtree, os.environ["BNSEARCH_CACHE"], ignore_errors=True)
ROOT = Path(__file__).resolve().parents[1]
# The real MNIST test set sits beside the checkout here and in CI, never in the repo.
MNIST_IDX = Path(os.environ.get("BNSEARCH_MNIST_IDX", ROOT.parent / "shared" / "data" / "mnist-t10k"))


@pytest.fixture(scope="session")
def free_port():
    """Call it for a TCP port that is free on 127.0.0.1 right now."""
    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return pick


@pytest.fixture
def mnist_idx_dir():
    if not any(MNIST_IDX.glob("*images-idx3-ubyte*")):
        pytest.skip(f"no MNIST IDX files at {MNIST_IDX} (set BNSEARCH_MNIST_IDX)")
    return MNIST_IDX


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory):
    """tests/sweeps/tiny_mlp.py run once through every phase on a local 2-CPU Ray: search,
    replicate, report. Returns the exit code, the storage directory and the tracking URI."""
    import ray

    from bnsearch import cli, tracking

    storage = tmp_path_factory.mktemp("results")
    # "local": a new Ray of its own, never one a killed test left running on this machine
    ray.init("local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        code = cli.main(["run", str(ROOT / "tests" / "sweeps" / "tiny_mlp.py"), "--storage", str(storage)])
    finally:
        ray.shutdown()
    return code, storage, tracking.default_tracking_uri(storage)


@pytest.fixture(scope="session")
def postgres(free_port):
    """A PostgreSQL server of the tests' own (Debian's ``postgresql``), on loopback with its own
    data directory, as a team or a cluster head would run it for MLflow. Yields ``new_database(name)``,
    which creates a database and returns its SQLAlchemy URI. Skipped where PostgreSQL is not
    installed, unless $BNSEARCH_REQUIRE_POSTGRES is set (CI installs it)."""
    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)
    if initdb is None:
        if os.environ.get("BNSEARCH_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql) but BNSEARCH_REQUIRE_POSTGRES is set")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    bin_dir = Path(os.path.realpath(initdb)).parent
    data = Path(tempfile.mkdtemp(prefix="bnsearch-postgres-"))
    as_postgres = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user, made by the package
        shutil.chown(data, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(*command: str) -> None:
        subprocess.run(as_postgres + list(command), check=True, capture_output=True, text=True)

    pg(str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    pg(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "server.log"), "-w", "-t", "60", "start",
       "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=200")

    def new_database(name: str) -> str:
        pg(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name)
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)
