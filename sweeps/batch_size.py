"""Question: how does BN's benefit depend on the batch size? Batch statistics get noisy at
small batches, so BN is said to help less (or hurt) there. A small convnet, arms BN
{none, before} x batch size {8, 32, 128}; the learning rate tuned per arm, then 10 seeds per
arm. BN is evaluated with precise statistics recomputed over batches of the arm's own size.

Command:  ray submit cluster/gpu.yaml sweeps/batch_size.py
          python sweeps/batch_size.py --dry-run         (digits, 2 CPUs, about 5 minutes)
Cost:     full: 6 arms x (12 search trials + 10 seeds) x <= 15 epochs of a 32-64 convnet on
          Fashion-MNIST, about 5 GPU-hours (batch 8 dominates); dry run: 6 arms x (2 trials +
          2 seeds) x <= 3 epochs on digits.
Compares: the interaction, BN's gain (before minus none) at batch 8 and at batch 32 against its
          gain at batch 128: differences of differences of at least ±0.5 points, paired by seed.
          ("Significant at 128, not at 8" would not test this; the interaction does.)
"""

from bnsearch.spec import Budget, Comparison, LogUniform, Resources, Sweep

BATCH_SIZES = (8, 32, 128)


def bn_gain(batch_size: int) -> tuple[str, str]:
    """BN's gain at one batch size, as the pair of arms whose difference it is."""
    return f"bn_placement=before,batch_size={batch_size}", f"bn_placement=none,batch_size={batch_size}"


def get_sweep(dry_run: bool = False) -> Sweep:
    sweep = Sweep(
        name="batch_size",
        question="BN x batch size: does BN's benefit shrink at small batches?",
        model="convnet",
        model_args={"filters": (32, 64), "activation": "relu"},
        dataset="fashion_mnist",
        scientific={"bn_placement": ("none", "before"), "batch_size": BATCH_SIZES},
        nuisance={"learning_rate": LogUniform(1e-4, 1e-1)},
        fixed={"optimizer": "adam", "lr_schedule": "cosine", "warmup_epochs": 1},
        budget=Budget(trials_per_arm=12, max_epochs=15, grace_epochs=3, reduction_factor=3, seeds=10, looks=(5, 10)),
        resources=Resources(cpu=2, gpu=0.25),
        comparisons=[Comparison(bn_gain(b), bn_gain(BATCH_SIZES[-1])) for b in BATCH_SIZES[:-1]],
    )
    if dry_run:
        return sweep.replace(dataset="digits", resources=Resources(cpu=1),
                             budget=Budget(trials_per_arm=2, max_epochs=3, grace_epochs=1, reduction_factor=2, seeds=2))
    return sweep


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
