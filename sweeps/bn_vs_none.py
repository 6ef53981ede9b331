"""Question: does BatchNorm help a small MLP on MNIST once the learning rate is tuned for each
arm? The folklore number is 97.37% with BN vs 95.13% without (a 2-hidden-layer MLP 32-32,
ReLU, Adam at lr 0.01, batch 32, 10 epochs), one run each at one learning rate.

Command:  ray submit cluster/gpu.yaml sweeps/bn_vs_none.py
          python sweeps/bn_vs_none.py --dry-run         (local, 2 CPUs, about a minute)
Cost:     full: 2 arms x 24 trials x <= 10 epochs of the 32-32 MLP on MNIST, minutes per trial
          on one CPU; dry run: 2 x 4 trials x <= 4 epochs on scikit-learn's digits.
"""

from bnsearch.spec import Budget, Choice, ComplementLogUniform, LogUniform, Resources, Sweep


def get_sweep(dry_run: bool = False) -> Sweep:
    sweep = Sweep(
        name="bn_vs_none",
        question="BN vs no BN in a 32-32 ReLU MLP on MNIST",
        model="mlp",
        model_args={"hidden_sizes": (32, 32), "activation": "relu"},
        dataset="mnist",
        scientific={"bn_placement": ("none", "before")},
        nuisance={
            "learning_rate": LogUniform(1e-4, 1e-1),
            "batch_size": Choice((32, 64, 128)),
            "bn_momentum": ComplementLogUniform(0.9, 0.999),
        },
        fixed={"optimizer": "adam"},
        budget=Budget(trials_per_arm=24, max_epochs=10, grace_epochs=2, reduction_factor=3),
        resources=Resources(cpu=1),
    )
    if dry_run:
        return sweep.replace(dataset="digits", budget=Budget(trials_per_arm=4, max_epochs=4, grace_epochs=1, reduction_factor=2))
    return sweep


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
