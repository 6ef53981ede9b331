"""Question: at 4 examples per batch, BN's batch statistics are noisy and differ from the
population ones it infers with. Does Batch Renormalization (Ioffe 2017: training corrected
towards the moving statistics, r and d clipped) rescue BN there, and does GroupNorm, which
needs no batch at all (Wu & He 2018), do as well? A small convnet, norm before every ReLU,
the learning rate tuned per arm, then 10 seeds per arm. BN and renorm are evaluated with precise
statistics recomputed over batches of 4; GroupNorm has none to recompute.

Command:  ray submit cluster/gpu.yaml sweeps/small_batch_norms.py
          python sweeps/small_batch_norms.py --dry-run     (digits, 2 CPUs, a few minutes)
Cost:     full: 3 arms x (12 search trials + 10 seeds) x <= 10 epochs of a 32-64 convnet on
          Fashion-MNIST at batch 4 (13,500 steps an epoch), about 8 GPU-hours before early
          stopping; dry run: 3 arms x (2 trials + 3 seeds) x <= 3 epochs on digits.
Compares: renorm vs batch and group vs batch, differences of test accuracy (two-sided).
"""

from bnsearch.spec import Budget, Comparison, LogUniform, Resources, Sweep


def get_sweep(dry_run: bool = False) -> Sweep:
    sweep = Sweep(
        name="small_batch_norms",
        question="At batch 4: does Batch Renormalization rescue BN, and does GroupNorm do as well?",
        model="convnet",
        model_args={"filters": (32, 64), "activation": "relu"},
        dataset="fashion_mnist",
        scientific={"norm": ("batch", "renorm", "group")},
        nuisance={"learning_rate": LogUniform(1e-4, 1e-2)},
        fixed={"bn_placement": "before", "batch_size": 4, "optimizer": "adam", "norm_groups": 8},
        budget=Budget(trials_per_arm=12, max_epochs=10, grace_epochs=2, reduction_factor=3, seeds=10, looks=(5, 10)),
        resources=Resources(cpu=2, gpu=0.25),
        comparisons=[Comparison("renorm", "batch"), Comparison("group", "batch")],
    )
    if dry_run:
        return sweep.replace(model_args={"filters": (16, 32), "activation": "relu"}, dataset="digits", resources=Resources(cpu=1),
                             budget=Budget(trials_per_arm=2, max_epochs=3, grace_epochs=1, reduction_factor=2, seeds=3))
    return sweep


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
