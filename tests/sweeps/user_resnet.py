"""Question: BN before vs after the ReLU, and Ghost BN, in a ResNet of the user's own
(tests/usermodels/nets.py, given by import path), for the bring-your-own-model test.

Command:  bnsearch run tests/sweeps/user_resnet.py --dry-run   (with the repository on PYTHONPATH)
Cost:     3 arms x (2 search trials + 2 seeds) x 2 epochs on digits, about a minute on 2 CPUs.
"""

from bnsearch.spec import Budget, Choice, Resources, Sweep


def get_sweep(dry_run: bool = False) -> Sweep:
    return Sweep(
        name="user_resnet",
        model="tests.usermodels.nets:resnet",
        model_args={"width": 8},
        dataset="digits",
        scientific={"bn_placement": ("none", "before", "after")},
        nuisance={"learning_rate": Choice((3e-3, 1e-2))},
        fixed={"norm": "ghost", "ghost_batch_size": 16, "batch_size": 64},
        budget=Budget(trials_per_arm=2, max_epochs=2, grace_epochs=1, sampler="grid", seeds=2),
        resources=Resources(cpu=1),
    )


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
