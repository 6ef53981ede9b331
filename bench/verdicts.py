"""Operating characteristics of bnsearch's verdict procedure, from simulated sweeps: the
group-sequential plan against the fixed design with the same seed budget, side by side.

    python bench/verdicts.py [--draws 4000] [--looks 5,10,20]

For true differences of 0, 1 and 2 sd of the per-seed differences (paired), one comparison
(difference, SESOI 0.5 sd) and a family of three: how often a difference is claimed, and the mean
seeds per arm the sweep ran. At 0 the rate is the false-positive rate; elsewhere it is the power.
"""

from __future__ import annotations

import argparse
import time

from bnsearch import stats
from bnsearch.stats.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--looks", default="5,10,20")
    args = parser.parse_args()
    looks = tuple(int(n) for n in args.looks.split(","))
    designs = {"sequential": stats.Plan(looks), "fixed": stats.Plan((looks[-1],))}
    print(f"{'family':>7} {'delta/sd':>9} {'design':>11} {'claims a difference':>20} {'mean seeds':>11} {'seeds saved':>12}")
    for family in (1, 3):
        for delta in (0.0, 1.0, 2.0):
            rows = {}
            for name, plan in designs.items():
                start = time.perf_counter()
                c = simulate([delta] * family, 1.0, plan, sesoi=0.5, draws=args.draws, seed=int(10 * delta) + family)
                rows[name] = (c.any_supported if delta == 0 else sum(c.supported) / family, c.mean_seeds, time.perf_counter() - start)
            for name, (rate, seeds, _) in rows.items():
                saved = 1 - seeds / rows["fixed"][1]
                print(f"{family:>7} {delta:>9.0f} {name:>11} {rate:>20.3f} {seeds:>11.2f} {saved:>11.0%}")
    print(f"({args.draws} simulated sweeps per row; looks {looks}; alpha 0.05 for the family; "
          "for a family the rate is the family-wise false-positive rate at 0, the mean power per comparison otherwise)")


if __name__ == "__main__":
    main()
