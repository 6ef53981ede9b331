import functools
import gzip
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bnsearch import data


def write_idx(folder, images, labels):
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", *images.shape) + images.tobytes())
    with open(folder / "t10k-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", len(labels)) + labels.tobytes())


@pytest.fixture
def files(tmp_path):
    """Small generated files for the user-data loaders (no network, nothing shipped)."""
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 6, 6)).astype(np.float32), rng.integers(0, 3, 50)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    table = pa.table({"features": [row.ravel().tolist() for row in x], "label": y})
    pq.write_table(table, tmp_path / "t.parquet")
    idx = tmp_path / "idx"
    idx.mkdir()
    write_idx(idx, (rng.random((30, 28, 28)) * 255).astype(np.uint8), rng.integers(0, 10, 30).astype(np.uint8))
    return tmp_path


def offline_args(name, files):
    return {
        "digits": {}, "mnist1d": {"num_samples": 1000},
        "npz": {"path": str(files / "xy.npz")},
        "parquet": {"path": str(files / "t.parquet"), "shape": (6, 6, 1)},
        "mnist_idx": {"path": str(files / "idx"), "test_size": 10},
    }.get(name)


KERAS = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}


def test_every_registered_dataset_is_covered_here():
    assert set(data.list_datasets()) == {"digits", "mnist1d", "npz", "parquet", "mnist_idx", *KERAS}


@pytest.mark.parametrize("name", ["digits", "mnist1d", "npz", "parquet", "mnist_idx"])
def test_offline_loaders(name, files):
    arrays = data.load(name, **offline_args(name, files))
    assert arrays.x_train.dtype == np.float32 and arrays.y_train.dtype == np.int32
    assert len(arrays.x_train) == len(arrays.y_train) > len(arrays.x_test) > 0
    assert arrays.y_train.max() < arrays.num_classes
    assert np.isfinite(arrays.x_train).all()


def test_known_shapes():
    assert data.load("digits").input_shape == (8, 8, 1) and len(data.load("digits").x_test) == 359
    m1d = data.load("mnist1d", num_samples=1000)
    assert m1d.input_shape == (40,) and (len(m1d.x_train), len(m1d.x_test)) == (800, 200)


def test_mnist1d_generation_leaves_numpys_global_rng_alone():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    data.load("mnist1d", num_samples=500)
    assert np.random.random() == expected


@pytest.fixture
def generator_calls(tmp_path, monkeypatch):
    """MNIST-1D cached in a fresh folder; the list of the generator's calls."""
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_load_cached", functools.lru_cache(maxsize=4)(data._load_cached.__wrapped__))
    calls, generate = [], data._DATASETS["mnist1d"]
    monkeypatch.setitem(data._DATASETS, "mnist1d", functools.wraps(generate)(lambda **o: calls.append(o) or generate(**o)))
    return calls


def assert_same_arrays(a, b):
    for field in ("x_train", "y_train", "x_test", "y_test", "num_classes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_a_generated_dataset_is_made_once_then_read_back_from_the_disk_cache(generator_calls):
    made = data.load("mnist1d", num_samples=300)
    data._load_cached.cache_clear()  # as a new process would: nothing in memory
    assert data.check("mnist1d", {"num_samples": 300}) is None
    read = data.load("mnist1d", num_samples=300)
    assert len(generator_calls) == 1
    assert_same_arrays(made, read)
    assert read.x_train.dtype == np.float32 and read.y_train.dtype == np.int32


def test_the_cache_is_keyed_by_the_options_a_loader_resolves(generator_calls):
    assert data.cache_path("mnist1d", {}) == data.cache_path("mnist1d", {"num_samples": 5000})
    assert data.cache_path("mnist1d", {"num_samples": 300}) != data.cache_path("mnist1d", {})
    data.load("mnist1d", num_samples=300)
    data.load("mnist1d", num_samples=400)
    assert len(generator_calls) == 2


def test_a_corrupt_cache_file_is_made_again_and_replaced(generator_calls):
    path = data.cache_path("mnist1d", {"num_samples": 300})
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK not a whole npz")  # e.g. a disk that filled up mid-write by another tool
    made = data.load("mnist1d", num_samples=300)
    assert len(generator_calls) == 1
    with np.load(path) as f:
        np.testing.assert_array_equal(f["x_train"].astype(np.float32), made.x_train)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_an_unwritable_cache_still_gives_the_data(generator_calls, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "a-file" / "cache"))  # mkdir fails: not a directory
    assert data.check("mnist1d", {"num_samples": 300}) is None
    assert len(data.load("mnist1d", num_samples=300).x_train) == 240
    assert len(generator_calls) == 2


def test_real_mnist_test_set(mnist_idx_dir):
    arrays = data.load("mnist_idx", path=str(mnist_idx_dir))
    assert (len(arrays.x_train), len(arrays.x_test)) == (8000, 2000)
    assert arrays.input_shape == (28, 28, 1) and arrays.x_train.max() == 1.0
    raw_labels = data.read_idx(next(mnist_idx_dir.glob("*labels*")))
    assert raw_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_mnist_idx_without_a_path_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv(data.MNIST_IDX_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="BNSEARCH_MNIST_IDX"):
        data.mnist_idx()


@pytest.mark.parametrize("name", sorted(KERAS))
def test_keras_loaders_scale_and_shape(name, monkeypatch):
    """Keras downloads need internet; check our handling of what its loader returns."""
    import keras

    rng = np.random.default_rng(0)
    color = name == "cifar10"
    shape = (20, 32, 32, 3) if color else (20, 28, 28)
    fake = lambda: ((rng.integers(0, 256, shape), rng.integers(0, 10, (20, 1) if color else 20)),  # noqa: E731
                    (rng.integers(0, 256, shape), rng.integers(0, 10, (20, 1) if color else 20)))
    monkeypatch.setattr(getattr(keras.datasets, KERAS[name]), "load_data", fake)
    data._load_cached.cache_clear()
    arrays = data.load(name)
    data._load_cached.cache_clear()
    assert arrays.input_shape == ((32, 32, 3) if color else (28, 28, 1))
    assert arrays.x_train.max() <= 1.0 and arrays.y_train.shape == (20,)


def test_splits_are_deterministic_per_seed_and_the_test_set_is_fixed():
    arrays = data.load("digits")
    a, b, c = data.split(arrays, 1), data.split(arrays, 1), data.split(arrays, 2)
    assert np.array_equal(a.validation[0], b.validation[0]) and np.array_equal(a.train[1], b.train[1])
    assert not np.array_equal(a.validation[0], c.validation[0])  # the seed re-draws validation
    assert np.array_equal(a.test[0], c.test[0])  # the test set is the same for every seed
    assert len(a.train[0]) + len(a.validation[0]) == len(arrays.x_train)
    assert len(a.validation[0]) == round(0.1 * len(arrays.x_train))


def test_tf_pipeline_shuffles_by_seed_and_resizes():
    x = np.arange(64, dtype=np.float32).reshape(16, 2, 2, 1)
    y = np.arange(16, dtype=np.int32)
    order = lambda seed: np.concatenate([b.numpy() for _, b in data.tf_dataset(x, y, 4, shuffle_seed=seed)])  # noqa: E731
    assert np.array_equal(order(3), order(3)) and not np.array_equal(order(3), order(4))
    assert sorted(order(3)) == list(range(16))
    images, _ = next(iter(data.tf_dataset(x, y, 4, image_size=8)))
    assert images.shape == (4, 8, 8, 1)


def test_pipelines_run_without_autotuning_and_keep_their_order():
    # Autotuning's per-iterator thread made freeing an epoch's iterator wait for its next wake-up
    # (about 1 epoch in 4 under Ray, BENCHMARKS.md "the stalled epochs"): no pipeline may turn it back on.
    import tensorflow as tf

    x = np.arange(64, dtype=np.float32).reshape(16, 2, 2, 1)
    y = np.arange(16, dtype=np.int32)
    order = np.random.default_rng(0).permutation(16)
    pipelines = [data.tf_dataset(x, y, 4, shuffle_seed=1, image_size=4), data.tf_dataset(x, y, 4),
                 data.ordered_dataset(tf.constant(x), tf.constant(y), order, 4, image_size=4)]
    assert [p.options().autotune.enabled for p in pipelines] == [False] * 3
    labels = np.concatenate([b.numpy() for _, b in pipelines[2]])
    assert np.array_equal(labels, order)  # the parallel resize keeps the epoch's order


def test_an_epoch_holds_the_same_batches_gathered_at_once_or_per_batch(monkeypatch):
    import tensorflow as tf

    x = np.arange(64, dtype=np.float32).reshape(16, 2, 2, 1)
    y = np.arange(16, dtype=np.int32)
    order = np.random.default_rng(0).permutation(16)

    def epoch():
        return [(a.numpy(), b.numpy()) for a, b in data.ordered_dataset(tf.constant(x), tf.constant(y), order, 5, image_size=4)]

    at_once = epoch()
    monkeypatch.setattr(data, "EAGER_GATHER_BYTES", 0)  # as a split too large to copy
    per_batch = epoch()
    assert [len(b) for _, b in at_once] == [5, 5, 5, 1]
    assert all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in zip(at_once, per_batch, strict=True))
    assert np.array_equal(np.concatenate([b for _, b in at_once]), order)


def test_evaluation_batches_match_the_tf_pipeline_and_iterate_again():
    x = np.random.default_rng(0).random((10, 3, 3, 1), dtype=np.float32)
    y = np.arange(10, dtype=np.int32)
    batches = data.Batches(x, y, 4, image_size=6)
    pipeline = [(a.numpy(), b.numpy()) for a, b in data.tf_dataset(x, y, 4, image_size=6)]
    for _ in range(2):  # evaluation reads the same batches at every epoch
        mine = [(np.asarray(a), b) for a, b in batches]
        assert len(mine) == len(batches) == 3
        assert all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in zip(mine, pipeline, strict=True))
