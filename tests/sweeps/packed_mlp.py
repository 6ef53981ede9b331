"""Question: none vs BN in an MLP on MNIST-1D, sized for the fault-tolerance tests: trials that
checkpoint every epoch (1-3 s each on 2 CPUs) and run long enough to be interrupted, two per GPU.

Command:  bnsearch run tests/sweeps/packed_mlp.py --address <a cluster with GPUs>
          bnsearch run tests/sweeps/packed_mlp.py --dry-run      (local, no GPU, 2 trials per arm, 4 epochs)
Cost:     2 arms x (3 search trials + 2 seeds) x 10 epochs, about a minute on 2 CPUs.
"""

import dataclasses

from bnsearch.spec import Budget, Choice, LogUniform, Resources, Sweep


def get_sweep(dry_run: bool = False) -> Sweep:
    sweep = Sweep(
        name="packed_mlp",
        model="mlp",
        model_args={"hidden_sizes": (512, 512)},
        dataset="mnist1d",
        scientific={"bn_placement": ("none", "before")},
        nuisance={"learning_rate": LogUniform(3e-4, 3e-3), "batch_size": Choice((32,))},  # where it learns: at 0.027 "none" collapses
        fixed={"optimizer": "adam"},
        budget=Budget(trials_per_arm=3, max_epochs=10, early_stopping=False, seeds=2, checkpoint_every_s=0,
                      sampler="random"),
        resources=Resources(cpu=1, gpu=0.5),
    )
    if dry_run:
        return sweep.replace(budget=dataclasses.replace(sweep.budget, trials_per_arm=2, max_epochs=4), resources=Resources(cpu=1))
    return sweep


if __name__ == "__main__":
    from bnsearch.cli import run_file; run_file(__file__)  # noqa: E702
