"""Question: does BatchNorm help a small MLP on MNIST once the learning rate is tuned for each
arm? The folklore number is 97.37% with BN vs 95.13% without (a 2-hidden-layer MLP 32-32,
ReLU, Adam at lr 0.01, batch 32, 10 epochs), one run each at one learning rate. Here learning
rate and batch size are nuisances tuned per arm (with a one-epoch warmup and cosine decay;
BN evaluated with precise statistics, so its momentum cannot matter and is not searched);
each arm's best configuration is then re-run over up to 20 seeds, in a group-sequential plan
that looks at 5, 10 and 20 seeds and stops once the comparison is decided.

Command:  ray submit cluster/gpu.yaml sweeps/bn_vs_none.py
          BNSEARCH_MNIST_IDX=../shared/data/mnist-t10k python sweeps/bn_vs_none.py
              (the real MNIST test set as an 8,000/2,000 dataset, offline: 2 CPUs, ~6 minutes)
          python sweeps/bn_vs_none.py --dry-run         (digits, 2 CPUs, about 2 minutes)
Cost:     full: 2 arms x (24 search trials + 5 to 20 seeds) x <= 10 epochs of the 32-32 MLP:
          on MNIST (Keras download, 54k/6k/10k) a few CPU-minutes per trial; dry run:
          2 arms x (4 trials + 3 seeds) x <= 4 epochs on scikit-learn's digits.
Compares: before vs none, a difference of at least ±0.5 points of test accuracy.
"""

import os

from bnsearch.spec import Budget, Choice, Comparison, LogUniform, Resources, Sweep


def get_sweep(dry_run: bool = False) -> Sweep:
    sweep = Sweep(
        name="bn_vs_none",
        question="BN vs no BN in a 32-32 ReLU MLP on MNIST",
        model="mlp",
        model_args={"hidden_sizes": (32, 32), "activation": "relu"},
        # The offline MNIST (an IDX directory) when one is given, else Keras' downloader.
        dataset="mnist_idx" if os.environ.get("BNSEARCH_MNIST_IDX") else "mnist",
        scientific={"bn_placement": ("none", "before")},
        nuisance={
            "learning_rate": LogUniform(1e-4, 1e-1),
            "batch_size": Choice((32, 64, 128)),
        },
        fixed={"optimizer": "adam", "lr_schedule": "cosine", "warmup_epochs": 1},
        budget=Budget(trials_per_arm=24, max_epochs=10, grace_epochs=2, reduction_factor=3, seeds=20, looks=(5, 10, 20)),
        resources=Resources(cpu=1),
        comparisons=[Comparison("before", "none", kind="difference", sesoi=0.5)],
    )
    if dry_run:
        return sweep.replace(dataset="digits", budget=Budget(trials_per_arm=4, max_epochs=4, grace_epochs=1, reduction_factor=2, seeds=3))
    return sweep


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
