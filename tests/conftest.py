import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
