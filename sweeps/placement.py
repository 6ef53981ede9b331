"""Question: in MobileNetV2, does BN before ReLU6 (conv → BN → ReLU6) beat BN after it
(conv → ReLU6 → BN) once each placement gets its own tuned learning rate, batch size and
BN epsilon? The folklore number is 0.828 vs 0.820 best validation accuracy, one run
each: this sweep tunes both arms with the same budget, re-runs each arm's best configuration
over 10 seeds and tests whether the two placements are equivalent within ±0.5 points of test
accuracy (TOST). Every evaluation uses precise BN statistics (recomputed with the final
weights), so BN momentum, which only moves the moving averages, is not searched; SGD runs a
linear warmup and a cosine decay.

Command:  ray submit cluster/gpu.yaml sweeps/placement.py
          python sweeps/placement.py --dry-run          (local, 2 CPUs, a few minutes)
Cost:     full: 2 arms x (32 search trials x <= 30 epochs + 10 seeds x 30 epochs) of
          MobileNetV2 (width 0.5) on CIFAR-10, about 35 GPU-hours before early stopping;
          dry run: 2 arms x (2 trials + 3 seeds) x <= 3 epochs on scikit-learn's digits
          resized to 32x32, about 5 minutes on 2 CPUs.
Compares: before vs after, equivalence within ±0.5 points.
"""

from bnsearch.spec import Budget, Choice, Comparison, LogUniform, Resources, Sweep


def get_sweep(dry_run: bool = False) -> Sweep:
    sweep = Sweep(
        name="placement",
        question="BN before vs after ReLU6 in MobileNetV2",
        model="mobilenet_v2",
        model_args={"width_multiplier": 0.5, "activation": "relu6"},
        dataset="cifar10",
        scientific={"bn_placement": ("before", "after")},
        nuisance={
            "learning_rate": LogUniform(1e-3, 0.5),
            "batch_size": Choice((64, 128, 256)),
            "bn_epsilon": LogUniform(1e-5, 1e-2),
        },
        fixed={"optimizer": "sgd", "sgd_momentum": 0.9, "weight_decay": 4e-5, "lr_schedule": "cosine", "warmup_epochs": 2},
        budget=Budget(trials_per_arm=32, max_epochs=30, grace_epochs=3, reduction_factor=3, seeds=10, looks=(5, 10)),
        resources=Resources(cpu=4, gpu=0.25),
        comparisons=[Comparison("before", "after", kind="equivalence", sesoi=0.5)],
    )
    if dry_run:
        return sweep.replace(
            model_args={"width_multiplier": 0.35, "activation": "relu6"},
            dataset="digits",
            dataset_args={"image_size": 32},
            nuisance={**sweep.nuisance, "batch_size": Choice((32, 64))},
            fixed={**sweep.fixed, "warmup_epochs": 1},
            budget=Budget(trials_per_arm=2, max_epochs=3, grace_epochs=1, reduction_factor=2, seeds=3),
            resources=Resources(cpu=1, gpu=0),
        )
    return sweep


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
