"""The dataset registry: offline-capable loaders → NumPy arrays → seeded splits → tf.data.

Every loader returns :class:`Arrays` with a fixed test split (the same for every seed, so arms
and seeds are compared on the same test images); :func:`split` then draws the validation set
from the training data with a split seed (one for the whole search phase, the seed itself in the
replicate phase). Loaders import their libraries lazily so the
registry can be listed on the driver without TensorFlow.

Always available offline: ``digits`` (ships inside scikit-learn) and ``mnist1d`` (generated, and
kept on disk once made: see :func:`cache_path`).
``mnist_idx`` reads an IDX directory such as the MNIST test set; ``parquet`` and ``npz`` read
your own files; ``mnist``, ``fashion_mnist`` and ``cifar10`` use Keras' downloader (and its
cache in ``~/.keras/datasets``, so a pre-seeded cache works offline too).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import inspect
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

MNIST_IDX_ENV = "BNSEARCH_MNIST_IDX"
COMMON_PARAMETERS = {"validation_fraction": 0.1, "image_size": None}
EAGER_GATHER_BYTES = 64 * 2**20  # a training split up to this size is copied into each epoch's order
# Where generated datasets are kept once made (default: ~/.cache/bnsearch/datasets), as Keras keeps
# its downloads: MNIST-1D's 20,000 samples take 5 s of CPU to generate, paid by the driver's check
# and by the phase's load on every run, against a few ms to read.
CACHE_ENV = "BNSEARCH_CACHE"


@dataclass(frozen=True)
class Arrays:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class Splits:
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    num_classes: int
    input_shape: tuple[int, ...]


_DATASETS: dict[str, Callable[..., Arrays]] = {}
_DOWNLOADS: set[str] = set()  # loaded through Keras (TensorFlow, network): only a worker can check them
_GENERATED: dict[str, str] = {}  # a generated dataset: the package whose version keys its cached arrays


def register_dataset(loader: Callable[..., Arrays] | None = None, *, downloads: bool = False, generated_by: str | None = None):
    """Register ``loader`` under its name; ``downloads=True`` for loaders that need Keras or the network;
    ``generated_by``: the package that generates the data, whose arrays are then cached on disk."""
    def register(fn: Callable[..., Arrays]) -> Callable[..., Arrays]:
        _DATASETS[fn.__name__] = fn
        if downloads:
            _DOWNLOADS.add(fn.__name__)
        if generated_by:
            _GENERATED[fn.__name__] = generated_by
        return fn

    return register(loader) if loader else register


def needs_worker(name: str) -> bool:
    """Whether only a worker can load the dataset (a Keras download, or a name not registered here)."""
    return name in _DOWNLOADS or name not in _DATASETS


def check(name: str, options: dict) -> str | None:
    """What is wrong with a dataset, found on the driver without TensorFlow (None: nothing, or only
    a worker can tell): an offline dataset is loaded once and its split must leave training,
    validation and test examples."""
    if name not in _DATASETS or name in _DOWNLOADS:
        return None
    loader_options = {k: v for k, v in options.items() if k not in COMMON_PARAMETERS}
    try:
        arrays = _loaded(name, loader_options)  # not kept in memory: the driver keeps no data for the sweep
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:  # a missing file, a bad column, ...
        return f"{name} cannot be loaded: {error}"
    n = len(arrays.x_train)
    n_val = max(1, int(round(n * options.get("validation_fraction", COMMON_PARAMETERS["validation_fraction"]))))
    if len(arrays.x_test) == 0 or n - n_val < 1:
        return (f"{name} with {loader_options or 'its defaults'} leaves {max(n - n_val, 0)} training, {min(n_val, n)} "
                f"validation and {len(arrays.x_test)} test examples: each needs at least one")
    return None


def shape(name: str, options: dict) -> tuple[tuple[int, ...], int]:
    """The input shape a model sees (after ``image_size``) and the number of classes, loaded
    once and not kept (the driver keeps no data for the sweep)."""
    loader_options = {k: v for k, v in options.items() if k not in COMMON_PARAMETERS}
    arrays = _DATASETS[name](**loader_options)
    return resized_shape(tuple(np.shape(arrays.x_train)[1:]), options.get("image_size")), int(arrays.num_classes)


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_parameters(name: str) -> dict[str, object]:
    """Options a dataset takes: its loader's own plus ``validation_fraction``/``image_size``."""
    return {**_loader_defaults(name), **COMMON_PARAMETERS}


def _loader_defaults(name: str) -> dict[str, object]:
    return {k: p.default for k, p in inspect.signature(_DATASETS[name]).parameters.items()}


def load(name: str, **options) -> Arrays:
    """Load a registered dataset (cached per process: trials reusing a worker load it once)."""
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return _load_cached(name, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, options: tuple) -> Arrays:
    arrays = _loaded(name, dict(options))
    return Arrays(
        x_train=np.ascontiguousarray(arrays.x_train, dtype=np.float32),
        y_train=np.asarray(arrays.y_train, dtype=np.int32).reshape(-1),
        x_test=np.ascontiguousarray(arrays.x_test, dtype=np.float32),
        y_test=np.asarray(arrays.y_test, dtype=np.int32).reshape(-1),
        num_classes=int(arrays.num_classes),
    )


def _loaded(name: str, options: dict) -> Arrays:
    """What the loader returns; a generated dataset's arrays read from the disk cache once made."""
    if name not in _GENERATED:
        return _DATASETS[name](**options)
    path = cache_path(name, options)
    try:
        with np.load(path) as f:
            return Arrays(f["x_train"], f["y_train"], f["x_test"], f["y_test"], int(f["num_classes"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):  # not made yet, or not a whole cache file: make it
        pass
    arrays = _DATASETS[name](**options)
    written = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
            written = f.name
            np.savez(f, x_train=arrays.x_train, y_train=arrays.y_train, x_test=arrays.x_test, y_test=arrays.y_test,
                     num_classes=arrays.num_classes)
        os.replace(written, path)  # whole or not at all; processes making it at once each write their own
    except OSError:  # nowhere to write: generated each time
        if written:
            with contextlib.suppress(OSError):
                os.unlink(written)
    return arrays


def cache_path(name: str, options: dict) -> Path:
    """Where a generated dataset's arrays are cached: by its options and its generator's version."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bnsearch"
    key = json.dumps([name, sorted({**_loader_defaults(name), **options}.items()), metadata.version(_GENERATED[name])], default=str)
    return Path(root) / "datasets" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def split(arrays: Arrays, seed: int, validation_fraction: float = 0.1) -> Splits:
    """Draw the validation set from the training data with ``seed``; the test set is fixed."""
    n = len(arrays.x_train)
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * validation_fraction)))
    val, train = order[:n_val], order[n_val:]
    return Splits(
        train=(arrays.x_train[train], arrays.y_train[train]),
        validation=(arrays.x_train[val], arrays.y_train[val]),
        test=(arrays.x_test, arrays.y_test),
        num_classes=arrays.num_classes,
        input_shape=arrays.input_shape,
    )


def tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None, image_size: int | None = None):
    """A tf.data pipeline: shuffle with ``shuffle_seed`` if given (reshuffled each epoch), batch,
    resize images if asked (per batch, so the cached arrays stay small), prefetch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    return _resized(ds.batch(batch_size), image_size)


def ordered_dataset(x, y, order: np.ndarray, batch_size: int, image_size: int | None = None):
    """Batches of ``(x[i], y[i])`` for ``i`` in ``order``. ``x`` and ``y`` are tensors made once
    per run. A small split is gathered into the epoch's order at once (a copy: a few ms less per
    epoch than gathering per batch, most of a tiny trial's pipeline); a large one per batch, so
    that an epoch in its own order costs an index array, not a copy of the data."""
    import tensorflow as tf

    if x.shape.num_elements() * x.dtype.size <= EAGER_GATHER_BYTES:
        with tf.device("/CPU:0"):  # where tf.data reads it: no round trip through a GPU
            ds = tf.data.Dataset.from_tensor_slices((tf.gather(x, order), tf.gather(y, order))).batch(batch_size)
    else:
        ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(lambda i: (tf.gather(x, i), tf.gather(y, i)))
    return _resized(ds, image_size)


class Batches:
    """Fixed-order batches ``(x, y)`` of in-memory arrays, resized if asked, as often as they are
    iterated: what evaluation and recalibration read. No tf.data pipeline: making one and its
    iterator costs milliseconds, and a tiny trial's evaluations iterate about seven."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, image_size: int | None = None):
        self.x, self.y, self.batch_size, self.image_size = x, y, batch_size, image_size

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        import tensorflow as tf

        for start in range(0, len(self.x), self.batch_size):
            x = self.x[start:start + self.batch_size]
            yield (tf.image.resize(x, (self.image_size, self.image_size)) if self.image_size else x), self.y[start:start + self.batch_size]


def _resized(ds, image_size: int | None):
    import tensorflow as tf

    if image_size:
        ds = ds.map(lambda a, b: (tf.image.resize(a, (image_size, image_size)), b), num_parallel_calls=tf.data.AUTOTUNE)
    # No autotuning: its model thread is one per iterator, and freeing an epoch's iterator waited
    # for that thread's next timed wake-up, seconds (BENCHMARKS.md, "the stalled epochs").
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options)


def resized_shape(input_shape: tuple[int, ...], image_size: int | None) -> tuple[int, ...]:
    return (image_size, image_size, input_shape[-1]) if image_size else input_shape


def _fixed_test_split(x: np.ndarray, y: np.ndarray, test_size: int | float, num_classes: int, split_seed: int = 0) -> Arrays:
    n = len(x)
    n_test = int(round(n * test_size)) if isinstance(test_size, float) else int(test_size)
    order = np.random.default_rng(split_seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return Arrays(x[train], y[train], x[test], y[test], num_classes)


# --- offline datasets ----------------------------------------------------------------------


@register_dataset
def digits(test_fraction: float = 0.2) -> Arrays:
    """scikit-learn's 1,797 8×8 handwritten digits (ships with the package), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0)[..., None]
    return _fixed_test_split(x, d.target, test_fraction, 10)


@register_dataset(generated_by="mnist1d")
def mnist1d(num_samples: int = 5000) -> Arrays:
    """MNIST-1D (Greydanus 2020), generated procedurally: 40-step sequences, 10 classes."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    state = np.random.get_state()  # make_dataset reseeds NumPy's global RNG; put it back
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    return Arrays(d["x"], d["y"], d["x_test"], d["y_test"], 10)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@register_dataset
def mnist_idx(path: str | None = None, test_size: int = 2000, split_seed: int = 0) -> Arrays:
    """An IDX directory (``*images-idx3-ubyte[.gz]`` + ``*labels-idx1-ubyte[.gz]``), e.g. the
    MNIST test set; ``path`` defaults to ``$BNSEARCH_MNIST_IDX``. 28×28×1, scaled to [0, 1]."""
    path = path or os.environ.get(MNIST_IDX_ENV)
    if not path:
        raise FileNotFoundError(f"mnist_idx needs dataset_args path=... or ${MNIST_IDX_ENV}")
    folder = Path(path)
    images = sorted(folder.glob("*images-idx3-ubyte*"))
    labels = sorted(folder.glob("*labels-idx1-ubyte*"))
    if not images or not labels:
        raise FileNotFoundError(f"{folder}: no *images-idx3-ubyte / *labels-idx1-ubyte files")
    x = read_idx(images[0]).astype(np.float32)[..., None] / 255.0
    y = read_idx(labels[0])
    return _fixed_test_split(x, y, test_size, 10, split_seed)


@register_dataset
def parquet(path: str = "", label_column: str = "label", shape: tuple | None = None, test_fraction: float = 0.2) -> Arrays:
    """Your own table: one row per example, ``label_column`` holds integer classes and every
    other column is a feature (scalar columns, or one list column); ``shape`` reshapes features.
    A ``split`` column with values ``train``/``test`` fixes the test set, else it is drawn."""
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pandas()
    y = table.pop(label_column).to_numpy()
    is_test = table.pop("split").to_numpy() == "test" if "split" in table else None
    if len(table.columns) == 1 and isinstance(table.iloc[0, 0], (list, np.ndarray)):
        x = np.stack(table.iloc[:, 0].to_numpy())
    else:
        x = table.to_numpy()
    x = x.reshape((len(x), *shape)) if shape else x
    num_classes = int(y.max()) + 1
    if is_test is None:
        return _fixed_test_split(x, y, test_fraction, num_classes)
    return Arrays(x[~is_test], y[~is_test], x[is_test], y[is_test], num_classes)


@register_dataset
def npz(path: str = "", test_fraction: float = 0.2) -> Arrays:
    """Your own ``.npz``: ``x_train, y_train, x_test, y_test``, or ``x, y`` (test set drawn)."""
    with np.load(path) as f:
        if "x_train" in f:
            y_all = np.concatenate([f["y_train"], f["y_test"]])
            return Arrays(f["x_train"], f["y_train"], f["x_test"], f["y_test"], int(y_all.max()) + 1)
        return _fixed_test_split(f["x"], f["y"], test_fraction, int(f["y"].max()) + 1)


# --- Keras' downloaders (need internet or a pre-seeded ~/.keras/datasets) -------------------


def _keras_images(load_data) -> Arrays:
    (x_train, y_train), (x_test, y_test) = load_data()
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    return Arrays(x_train / 255.0, y_train, x_test / 255.0, y_test, int(y_train.max()) + 1)


@register_dataset(downloads=True)
def mnist() -> Arrays:
    import keras

    return _keras_images(keras.datasets.mnist.load_data)


@register_dataset(downloads=True)
def fashion_mnist() -> Arrays:
    import keras

    return _keras_images(keras.datasets.fashion_mnist.load_data)


@register_dataset(downloads=True)
def cifar10() -> Arrays:
    import keras

    return _keras_images(keras.datasets.cifar10.load_data)
