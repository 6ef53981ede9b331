"""Question: with large batches, does Ghost BN (Hoffer et al. 2017: statistics over virtual
batches of 32 inside each batch of 1024) generalize better than BN over the whole batch?
MobileNetV2 (width 0.5) on CIFAR-10 at batch 1024, BN before every ReLU6; the learning rate
tuned per arm (SGD, warmup, cosine decay), then 10 seeds per arm. Both arms are evaluated with
precise statistics; Ghost BN's are its virtual batches' (what it trained with).

Command:  ray submit cluster/gpu.yaml sweeps/ghost_bn.py
          python sweeps/ghost_bn.py --dry-run      (digits, 2 CPUs, a few minutes)
Cost:     full: 2 arms x (16 search trials + 10 seeds) x <= 30 epochs of MobileNetV2-0.5 on
          CIFAR-10 (44 steps an epoch at batch 1024), about 10 GPU-hours before early stopping;
          dry run: 2 arms x (2 trials + 3 seeds) x <= 6 epochs of a small convnet on digits at
          batch 128 with virtual batches of 16.
Compares: ghost vs batch, a difference of test accuracy (two-sided).
"""

from bnsearch.spec import Budget, Comparison, LogUniform, Resources, Sweep


def get_sweep(dry_run: bool = False) -> Sweep:
    sweep = Sweep(
        name="ghost_bn",
        question="At batch 1024: does Ghost BN (virtual batches of 32) beat BN over the whole batch?",
        model="mobilenet_v2",
        model_args={"width_multiplier": 0.5, "activation": "relu6"},
        dataset="cifar10",
        scientific={"norm": ("batch", "ghost")},
        nuisance={"learning_rate": LogUniform(0.05, 3.0)},
        fixed={"bn_placement": "before", "batch_size": 1024, "ghost_batch_size": 32, "optimizer": "sgd",
               "sgd_momentum": 0.9, "weight_decay": 5e-5, "lr_schedule": "cosine", "warmup_epochs": 3},
        budget=Budget(trials_per_arm=16, max_epochs=30, grace_epochs=5, reduction_factor=3, seeds=10, looks=(5, 10)),
        resources=Resources(cpu=4, gpu=0.5),
        comparisons=[Comparison("ghost", "batch")],
    )
    if dry_run:
        return sweep.replace(
            model="convnet", model_args={"filters": (16, 32), "activation": "relu"}, dataset="digits",
            nuisance={"learning_rate": LogUniform(1e-3, 3e-2)},
            fixed={"bn_placement": "before", "batch_size": 128, "ghost_batch_size": 16, "optimizer": "adam"},
            budget=Budget(trials_per_arm=2, max_epochs=6, grace_epochs=2, reduction_factor=2, seeds=3),
            resources=Resources(cpu=1),
        )
    return sweep


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
