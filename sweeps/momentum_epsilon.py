"""Question: do BN momentum and epsilon matter once the learning rate is tuned? Keras
defaults to momentum 0.99 / epsilon 1e-3, PyTorch to 0.9 / 1e-5 (its momentum=0.1). A small
convnet with BN before ReLU, arms momentum {0.9, 0.99, 0.999} x epsilon {1e-5, 1e-3}; the
learning rate is a nuisance tuned per arm, so its interaction with momentum and epsilon shows
as each arm's best learning rate (the report's replicated-configuration table).

Command:  ray submit cluster/gpu.yaml sweeps/momentum_epsilon.py
          python sweeps/momentum_epsilon.py --dry-run   (digits, 2 CPUs, about 5 minutes)
Cost:     full: 6 arms x (12 search trials + 10 seeds) x <= 15 epochs of a 32-64 convnet on
          CIFAR-10, about 6 GPU-hours; dry run: 6 arms x (2 trials + 2 seeds) x <= 3 epochs.
Compares: at epsilon 1e-3, momentum 0.9 vs 0.99 and 0.999 vs 0.99; at momentum 0.99, epsilon
          1e-5 vs 1e-3; all differences of at least ±0.5 points.
"""

from bnsearch.spec import Budget, Comparison, LogUniform, Resources, Sweep


def arm(momentum: float, epsilon: float) -> str:
    return f"bn_momentum={momentum},bn_epsilon={epsilon}"


def get_sweep(dry_run: bool = False) -> Sweep:
    sweep = Sweep(
        name="momentum_epsilon",
        question="BN momentum x epsilon, with the learning rate tuned per arm",
        model="convnet",
        model_args={"filters": (32, 64), "activation": "relu"},
        dataset="cifar10",
        scientific={"bn_momentum": (0.9, 0.99, 0.999), "bn_epsilon": (1e-5, 1e-3)},
        nuisance={"learning_rate": LogUniform(1e-4, 1e-1)},
        # The question is the moving averages themselves: evaluate with them, as Keras does.
        fixed={"optimizer": "adam", "bn_placement": "before", "batch_size": 64, "bn_statistics": "moving",
               "lr_schedule": "cosine", "warmup_epochs": 1},
        budget=Budget(trials_per_arm=12, max_epochs=15, grace_epochs=3, reduction_factor=3, seeds=10, looks=(5, 10)),
        resources=Resources(cpu=2, gpu=0.25),
        comparisons=[
            Comparison(arm(0.9, 1e-3), arm(0.99, 1e-3)),
            Comparison(arm(0.999, 1e-3), arm(0.99, 1e-3)),
            Comparison(arm(0.99, 1e-5), arm(0.99, 1e-3)),
        ],
    )
    if dry_run:
        return sweep.replace(
            dataset="digits", fixed={**sweep.fixed, "batch_size": 32}, resources=Resources(cpu=1),
            budget=Budget(trials_per_arm=2, max_epochs=3, grace_epochs=1, reduction_factor=2, seeds=2),
        )
    return sweep


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
