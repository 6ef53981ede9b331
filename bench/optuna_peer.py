"""The peer a user would pick instead of bnsearch: a plain Optuna study over a shared journal
file, run by several worker processes (TensorFlow imported once per process). Same model,
data, configurations and epochs as the bnsearch run it is compared with; no tracking.

    python bench/optuna_peer.py JOURNAL STUDY N_TRIALS EPOCHS
"""

import json
import sys
import time

start = time.perf_counter()

import optuna  # noqa: E402

import bare  # noqa: E402  (bench/ is on sys.path when run as a script)


def main(journal: str, study_name: str, n_trials: int, epochs: int) -> dict:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.load_study(study_name=study_name, storage=storage)
    bare.train.setup_tensorflow(1)
    splits = bare.data.split(bare.data.load(bare.DATASET, **bare.DATASET_ARGS), 0, 0.1)
    epoch_s = []

    def objective(trial):
        # The study holds the configurations as enqueued trials: each worker takes the next one.
        config = {**trial.study.user_attrs["base"], "seed": trial.number,
                  "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1.0, log=True)}
        result = bare.fit(config, epochs, splits)
        epoch_s.append(result["epoch_s"])
        return -sum(result["epoch_s"])  # any value: the comparison is about time

    study.optimize(objective, n_trials=n_trials)
    return {"train_s": sum(map(sum, epoch_s)), "epoch_s": epoch_s, "wall_s": time.perf_counter() - start}


if __name__ == "__main__":
    journal, name, n, epochs = sys.argv[1:5]
    print(json.dumps(main(journal, name, int(n), int(epochs))))
