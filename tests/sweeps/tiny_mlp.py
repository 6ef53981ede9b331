"""Question: none vs BN in a tiny MLP on digits, for the integration test: a grid that holds a
hopeless learning rate (ASHA stops it, or it ends still at chance: collapsed) and an absurd one
(the trial diverges).

Command:  bnsearch run tests/sweeps/tiny_mlp.py
Cost:     2 arms x (6 search trials + 3 seeds) x <= 3 epochs, under a minute on 2 CPUs.
"""

from bnsearch.spec import Budget, Choice, Comparison, Resources, Sweep


def get_sweep(dry_run: bool = False) -> Sweep:
    return Sweep(
        name="tiny_mlp",
        model="mlp",
        model_args={"hidden_sizes": (32, 32)},
        dataset="digits",
        scientific={"bn_placement": ("none", "before")},
        nuisance={"learning_rate": Choice((1e-4, 0.1, 1e30)), "batch_size": Choice((32, 128))},
        fixed={"optimizer": "sgd"},
        budget=Budget(trials_per_arm=6, max_epochs=3, grace_epochs=1, reduction_factor=2, sampler="grid",
                      max_concurrent_trials=2, seeds=3, looks=(2, 3)),
        resources=Resources(cpu=1),
        comparisons=[Comparison("before", "none")],
    )


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
