"""The baseline a user would write without bnsearch: a plain Keras script that trains a list of
configurations one after another in one process (TensorFlow imported once), no tracking, no
checkpoints. Prints one JSON line with its timings.

    python bench/bare.py '{"configs": [...], "epochs": 30, "threads": 1}'
    python bench/bare.py '{"throughput": {...config...}, "epochs": 5, "rounds": 3, "threads": 1}'
"""

import json
import os
import sys
import time

start = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from bnsearch import compiled, data, train  # noqa: E402

DATASET, DATASET_ARGS = "mnist1d", {"num_samples": 20_000}


def fit(config: dict, epochs: int, splits) -> dict:
    """Seed, build, compile, fit, evaluate: the same model and data pipeline bnsearch uses."""
    keras.utils.set_random_seed(int(config["seed"]))
    batch = int(config["batch_size"])
    model = compiled.build_model("mlp", config, splits.input_shape, splits.num_classes)
    compiled.compile_model(model, compiled.make_optimizer(config))
    timer = EpochTimer()
    model.fit(data.tf_dataset(*splits.train, batch, shuffle_seed=int(config["seed"])),
              validation_data=data.tf_dataset(*splits.validation, batch), epochs=epochs, verbose=0, callbacks=[timer])
    model.evaluate(data.tf_dataset(*splits.test, batch), verbose=0)
    return {"epoch_s": timer.epoch_s, "samples_per_s": [len(splits.train[0]) / s for s in timer.epoch_s]}


class EpochTimer(keras.callbacks.Callback):
    """Each epoch's training time, its validation pass left out: bnsearch's ``epoch_time_s``
    counts training steps only (its evaluation is timed apart), so the two compare like for like."""

    def __init__(self):
        super().__init__()
        self.epoch_s: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started, self._validating = time.perf_counter(), 0.0

    def on_test_begin(self, logs=None):
        self._validation_started = time.perf_counter()

    def on_test_end(self, logs=None):
        self._validating += time.perf_counter() - self._validation_started

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_s.append(time.perf_counter() - self._started - self._validating)


def bnsearch_loop(config: dict, epochs: int) -> dict:
    """bnsearch's own training loop (train.run: per-epoch reports, checkpoints, diagnostics)."""
    seen = []
    train.run(config, model="mlp", dataset=DATASET, dataset_args=DATASET_ARGS, max_epochs=epochs,
              report=lambda metrics, checkpoint: seen.append(metrics))
    return {"epoch_s": [m["epoch_time_s"] for m in seen], "samples_per_s": [m["samples_per_s"] for m in seen]}


def main(job: dict) -> dict:
    train.setup_tensorflow(job.get("threads", 1))
    splits = data.split(data.load(DATASET, **DATASET_ARGS), 0, 0.1)
    if "throughput" in job:  # alternate the two, so a slow spell of the machine hits both
        rounds = [(fit(job["throughput"], job["epochs"], splits), bnsearch_loop(job["throughput"], job["epochs"]))
                  for _ in range(job.get("rounds", 1))]
        return {name: {key: [x for r in rounds for x in r[i][key][1:]] for key in ("epoch_s", "samples_per_s")}
                for i, name in enumerate(("bare", "bnsearch"))}  # epoch 1 of each holds the tracing
    results = [fit({**c, "seed": c.get("seed", i)}, job["epochs"], splits) for i, c in enumerate(job["configs"])]
    return {"train_s": sum(sum(r["epoch_s"]) for r in results), "epoch_s": [r["epoch_s"] for r in results],
            "wall_s": time.perf_counter() - start}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
