"""Question: does BN right before a sigmoid hurt? Folklore says BN before a saturating
activation keeps it in its linear region and BN after it is the better place; the alternative
view is that BN before a sigmoid is exactly what keeps it from saturating. A 64-64 sigmoid MLP,
BN none / before / after, every arm with its own tuned learning rate and batch size (BN
evaluated with precise statistics, so its momentum is not searched), then 10 seeds per arm.

Command:  ray submit cluster/gpu.yaml sweeps/sigmoid.py
          python sweeps/sigmoid.py --dry-run           (digits, 2 CPUs, about 3 minutes)
Cost:     full: 3 arms x (16 search trials + 10 seeds) x <= 10 epochs of a 64-64 MLP on MNIST,
          minutes per trial on one CPU; dry run: 3 arms x (3 trials + 3 seeds) x <= 4 epochs.
Compares: before vs none and before vs after, differences of at least ±0.5 points.
"""

from bnsearch.spec import Budget, Choice, Comparison, LogUniform, Resources, Sweep


def get_sweep(dry_run: bool = False) -> Sweep:
    sweep = Sweep(
        name="sigmoid",
        question="BN right before a sigmoid: does it hurt?",
        model="mlp",
        model_args={"hidden_sizes": (64, 64), "activation": "sigmoid"},
        dataset="mnist",
        scientific={"bn_placement": ("none", "before", "after")},
        nuisance={
            "learning_rate": LogUniform(1e-4, 1e-1),
            "batch_size": Choice((32, 128)),
        },
        fixed={"optimizer": "adam", "lr_schedule": "cosine", "warmup_epochs": 1},
        budget=Budget(trials_per_arm=16, max_epochs=10, grace_epochs=2, reduction_factor=3, seeds=10),
        resources=Resources(cpu=1),
        comparisons=[Comparison("before", "none"), Comparison("before", "after")],
    )
    if dry_run:
        return sweep.replace(dataset="digits", budget=Budget(trials_per_arm=3, max_epochs=4, grace_epochs=1, reduction_factor=2, seeds=3))
    return sweep


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
