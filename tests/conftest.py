import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
# The real MNIST test set sits beside the checkout here and in CI, never in the repo.
MNIST_IDX = Path(os.environ.get("BNSEARCH_MNIST_IDX", ROOT.parent / "shared" / "data" / "mnist-t10k"))


@pytest.fixture
def mnist_idx_dir():
    if not any(MNIST_IDX.glob("*images-idx3-ubyte*")):
        pytest.skip(f"no MNIST IDX files at {MNIST_IDX} (set BNSEARCH_MNIST_IDX)")
    return MNIST_IDX
