"""Question: should there be no BN right before the output layer? Folklore says a BN just
before the logits hurts. A 64-64 ReLU MLP with BN before every activation, with and without
one more BN right before the output layer (arm "True" / "False"), each arm tuned, then 10
seeds per arm.

Command:  ray submit cluster/gpu.yaml sweeps/output_bn.py
          python sweeps/output_bn.py --dry-run          (digits, 2 CPUs, about 2 minutes)
Cost:     full: 2 arms x (16 search trials + 10 seeds) x <= 10 epochs of a 64-64 MLP on
          Fashion-MNIST, minutes per trial on one CPU; dry run: 2 arms x (3 trials + 3 seeds)
          x <= 4 epochs on digits.
Compares: True (BN before the output layer) vs False, a difference of at least ±0.5 points.
"""

from bnsearch.spec import Budget, Choice, Comparison, LogUniform, Resources, Sweep


def get_sweep(dry_run: bool = False) -> Sweep:
    sweep = Sweep(
        name="output_bn",
        question="BN right before the output layer: does it hurt?",
        model="mlp",
        model_args={"hidden_sizes": (64, 64), "activation": "relu"},
        dataset="fashion_mnist",
        scientific={"output_bn": (False, True)},
        nuisance={
            "learning_rate": LogUniform(1e-4, 1e-1),
            "batch_size": Choice((32, 128)),
        },
        fixed={"optimizer": "adam", "lr_schedule": "cosine", "warmup_epochs": 1, "bn_placement": "before"},
        budget=Budget(trials_per_arm=16, max_epochs=10, grace_epochs=2, reduction_factor=3, seeds=10),
        resources=Resources(cpu=1),
        comparisons=[Comparison("True", "False")],
    )
    if dry_run:
        return sweep.replace(dataset="digits", budget=Budget(trials_per_arm=3, max_epochs=4, grace_epochs=1, reduction_factor=2, seeds=3))
    return sweep


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
