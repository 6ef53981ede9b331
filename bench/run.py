"""bnsearch benchmarks: the sweep machinery against what a user would otherwise run, measured
side by side in one run on this machine. Prints a table and writes the figures as JSON.

    python bench/run.py [--quick] [--repeats R] [--out bench-results.json]
                        [--skip-search] [--skip-dry-runs] [--skip-scale] [--store DIR]

- scheduling efficiency = time in training epochs / (wall time x parallel slots), for 8
  trials of about 10 s and 4 of about 60 s (--quick: 4 and 2, of about 10 s and 30 s);
  the short-trial comparisons below run in turns, 3 times, and report medians;
- overhead vs a bare Keras script (bench/bare.py) run sequentially and as 2 processes;
- the peer: the same trials as a plain Optuna study over a journal file, 2 worker processes;
- tracking overhead: the same bnsearch run with MLflow logging on and off;
- throughput (samples/s) of bnsearch's training loop vs a bare Keras fit;
- search efficiency (bench/search_efficiency.py): epochs until a configuration within 0.5
  points of the grid optimum is found, TPE+ASHA vs random vs the full grid;
- the shipped dry runs (bench/dry_runs.py: placement, bn_vs_none) as a user runs them: wall
  time and the honest efficiency, useful work = epochs x each trial's steady epoch time
  (tracing, start-up, evaluation all overhead), with the breakdown and its ceiling (the
  efficiency if nothing outside the trials cost anything); also for the MLP trials, beside the
  bare script's and the Optuna peer's by the same measure;
- scale (about 13 minutes, 8 of them building the store; --quick: 200 trials, 1,000 runs):
  1,000 tiny trials through the Tune path, tracked (bench/many_trials.py: overhead in
  slot-seconds per trial over the floor), beside the same trials untracked and as many trials
  through Tune alone, and the report rebuilt from a synthetic 10,000-run
  store (bench/read_path.py, with client calls per trial; ``--store DIR`` keeps the store of
  each size for the next run).

Workload: an MLP (256-256, BN before ReLU, Adam, batch 32) on MNIST-1D with 20,000 samples
(generated, offline), learning rates from a fixed grid, one CPU per trial.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = {"hidden_sizes": [256, 256], "batch_size": 32, "bn_placement": "before", "optimizer": "adam"}
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
SLOTS = 2
# The scale part's sizes, the (--quick: a fifth and a tenth); its targets hold at these.
TINY_TRIALS, STORE_RUNS = 1000, 10_000


def script(name: str, *args: str) -> tuple[dict, float]:
    """Run a bench script in a fresh process; its JSON result and the wall time around it."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def parallel(jobs: list[tuple[str, ...]]) -> tuple[list[dict], float]:
    """Several bench scripts at once; their results and the wall time until the last ends."""
    start = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [subprocess.Popen([sys.executable, str(HERE / j[0]), *j[1:]], stdout=subprocess.PIPE, text=True, env=env) for j in jobs]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a bench process failed: {[p.returncode for p in procs]}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs], time.perf_counter() - start


def configs(n: int) -> list[dict]:
    return [{**BASE, "learning_rate": lr} for lr in LEARNING_RATES[:n]]


def bnsearch_run(n: int, epochs: int, track: bool = True) -> dict:
    """The same configurations through bnsearch: Ray Tune trials, MLflow child runs."""
    import ray

    import dry_runs

    from bnsearch import results, tracking, trainable
    from bnsearch.spec import Budget, Resources, Sweep

    sweep = Sweep(name="bench", model="mlp", dataset="mnist1d", dataset_args={"num_samples": 20_000},
                  scientific={"bn_placement": ("before",)}, model_args={"hidden_sizes": (256, 256)},
                  fixed={"optimizer": "adam", "batch_size": 32},
                  budget=Budget(max_epochs=epochs, early_stopping=False, max_concurrent_trials=SLOTS), resources=Resources(cpu=1))
    with tempfile.TemporaryDirectory(prefix="bnsearch-bench-") as storage:
        uri = tracking.default_tracking_uri(storage)
        tracker = tracking.SweepTracker(uri, "bench", artifact_root=tracking.local_artifact_root(uri, storage))
        tracker.start_sweep("bench", params={}, tags={}, artifacts={})
        todo = [{**sweep.resolve("before").config, **c, "arm": "before", "phase": "replicate", "trial_index": i, "seed": i}
                for i, c in enumerate(configs(n))]
        start = time.perf_counter()  # Ray's start-up included: a user pays it too
        outcome = trainable.run_phase(sweep, "replicate", tracker=tracker, sweep_id="bench", storage=storage,
                                      configs=todo, track=track)
        wall = time.perf_counter() - start
        honest = dry_runs.breakdown(results.from_records(tracker.trial_records()), wall, SLOTS) if track else {}
        ray.shutdown()
    if not outcome.ok or len(outcome.trials) != n:
        raise RuntimeError(f"bnsearch run failed: {outcome.trials}")
    train_s = sum(t["train_time_s"] for t in outcome.trials)
    return {"wall_s": wall, "train_s": train_s, "efficiency": train_s / (wall * SLOTS),
            **({"honest_efficiency": honest["efficiency"], "ceiling": honest["ceiling"]} if honest else {})}


def bare_job(configs_: list[dict], epochs: int, threads: int) -> str:
    return json.dumps({"configs": configs_, "epochs": epochs, "threads": threads})


def bare_runs(n: int, epochs: int) -> dict:
    """The bare script as 2 processes, each training half of the configurations."""
    halves = [configs(n)[i::SLOTS] for i in range(SLOTS)]
    both, wall = parallel([("bare.py", bare_job(h, epochs, 1)) for h in halves])
    return contender(both, wall)


def contender(processes: list[dict], wall: float) -> dict:
    """A bare or peer run's figures from its processes' results: its scheduling efficiency and
    its useful-work efficiency by the definition bnsearch's runs are measured by."""
    import dry_runs

    train_s = sum(r["train_s"] for r in processes)
    useful_s = sum(dry_runs.useful_work(e) for r in processes for e in r["epoch_s"])
    return {"wall_s": wall, "train_s": train_s, "efficiency": train_s / (wall * SLOTS),
            "honest_efficiency": useful_s / (wall * SLOTS)}


def bare_sequential(n: int, epochs: int) -> float:
    """The bare script as one process with the whole machine, one configuration after another."""
    return script("bare.py", bare_job(configs(n), epochs, SLOTS))[1]


def median_run(samples: list[dict]) -> dict:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def optuna_peer(n: int, epochs: int) -> dict:
    import optuna

    with tempfile.TemporaryDirectory(prefix="bnsearch-peer-") as tmp:
        journal = str(Path(tmp) / "journal.log")
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name="peer", storage=storage)
        study.set_user_attr("base", BASE)
        for c in configs(n):
            study.enqueue_trial({"learning_rate": c["learning_rate"]})
        results, wall = parallel([("optuna_peer.py", journal, "peer", str(n // SLOTS), str(epochs))] * SLOTS)
    return contender(results, wall)


def throughput(epochs: int, rounds: int) -> dict:
    job = {"throughput": {**BASE, "learning_rate": 1e-3, "seed": 0}, "epochs": epochs, "rounds": rounds, "threads": 1}
    result, _ = script("bare.py", json.dumps(job))
    steady = {k: statistics.median(v["samples_per_s"]) for k, v in result.items()}
    epoch_s = statistics.median(result["bare"]["epoch_s"])
    return {"bare_samples_per_s": steady["bare"], "bnsearch_samples_per_s": steady["bnsearch"],
            "ratio": steady["bnsearch"] / steady["bare"], "epoch_s": epoch_s}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer and shorter trials (about 8 minutes)")
    p.add_argument("--out", default="bench-results.json")
    p.add_argument("--repeats", type=int, help="rounds of the short comparison, medians reported (default 3; --quick: 1)")
    p.add_argument("--skip-search", action="store_true", help="leave out the search-efficiency benchmark")
    p.add_argument("--skip-dry-runs", action="store_true", help="leave out the shipped dry runs (about 6 minutes)")
    p.add_argument("--skip-scale", action="store_true", help="leave out the 1,000 tiny trials and the 10,000-run read path")
    p.add_argument("--store", type=Path, help="where the read path's synthetic stores are kept and reused, one per size "
                   "(default: built afresh)")
    args = p.parse_args(argv)
    if args.store and args.skip_scale:
        p.error("--store is for the scale part, which --skip-scale leaves out")

    figures = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
               "quick": args.quick}
    try:
        measure_into(figures, args)
    finally:  # a part that fails keeps what the others measured
        Path(args.out).write_text(json.dumps(figures, indent=2))
    print(table(figures))
    print(f"\nfigures: {args.out}")
    return figures


def measure_into(figures: dict, args) -> None:
    """Every part's figures into ``figures``, each as it ends."""
    repeats = args.repeats or (1 if args.quick else 3)
    figures["throughput"] = t = throughput(epochs=6, rounds=repeats)
    short_n, long_n, long_target = (4, 2, 30) if args.quick else (8, 4, 60)
    short_epochs = max(2, round(10 / t["epoch_s"]))
    long_epochs = max(2, round(long_target / t["epoch_s"]))
    # The contenders take turns, `repeats` times, and the medians count: a shared 2-CPU machine
    # has slow spells that would otherwise land on whichever ran at the time.
    runs = {"bnsearch": [], "bnsearch_untracked": [], "bare": [], "optuna": []}
    contenders = {
        "bnsearch": lambda: bnsearch_run(short_n, short_epochs),
        "bnsearch_untracked": lambda: bnsearch_run(short_n, short_epochs, track=False),
        "bare": lambda: bare_runs(short_n, short_epochs),
        "optuna": lambda: optuna_peer(short_n, short_epochs),
    }
    for r in range(repeats):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))  # no one always goes first
        for name in order:
            runs[name].append(contenders[name]())
    short = {name: median_run(samples) for name, samples in runs.items()}
    short["bare"]["sequential_wall_s"] = bare_sequential(short_n, short_epochs)
    figures["short"] = {"trials": short_n, "epochs": short_epochs, "repeats": repeats, **short, "samples": runs}
    figures["long"] = {"trials": long_n, "epochs": long_epochs, "bnsearch": bnsearch_run(long_n, long_epochs)}
    if not args.skip_search:
        import search_efficiency

        figures["search"] = search_efficiency.run(quick=args.quick)
    if not args.skip_dry_runs:
        import dry_runs

        figures["dry_runs"] = [dry_runs.run(path) for path in dry_runs.DRY_RUNS]
    if not args.skip_scale:
        import many_trials
        import read_path

        trials, runs = (TINY_TRIALS // 5, STORE_RUNS // 10) if args.quick else (TINY_TRIALS, STORE_RUNS)
        figures["tiny_trials"] = many_trials.run_trials(trials, track=True)
        # Side by side, what the same trials cost untracked and what Tune alone costs per trial.
        figures["tiny_trials_untracked"] = many_trials.run_trials(trials, track=False)
        figures["tune_alone"] = many_trials.tune_alone(trials)
        figures["read_path"] = read_path.run(runs=runs, store=args.store and args.store / f"{runs}-runs")


def table(f: dict) -> str:
    s, lg, t = f["short"], f["long"], f["throughput"]
    b, bare, peer, off = s["bnsearch"], s["bare"], s["optuna"], s["bnsearch_untracked"]
    rows = [
        ("scheduling efficiency, short trials", f"{b['efficiency']:.2f}", ">= 0.85", f"{s['trials']} trials x {s['epochs']} epochs"),
        ("scheduling efficiency, long trials", f"{lg['bnsearch']['efficiency']:.2f}", ">= 0.85", f"{lg['trials']} trials x {lg['epochs']} epochs"),
        ("wall: bnsearch / bare, 2 processes", f"{b['wall_s'] / bare['wall_s']:.2f}", "<= 1.15",
         f"{b['wall_s']:.1f} s vs {bare['wall_s']:.1f} s (medians of {s['repeats']})"),
        ("wall: bnsearch / bare, sequential", f"{b['wall_s'] / bare['sequential_wall_s']:.2f}", "-", f"vs {bare['sequential_wall_s']:.1f} s"),
        ("wall: bnsearch / Optuna peer", f"{b['wall_s'] / peer['wall_s']:.2f}", "<= 1.0", f"vs {peer['wall_s']:.1f} s"),
        ("tracking overhead (wall on / off - 1)", f"{b['wall_s'] / off['wall_s'] - 1:+.1%}", "<= 2%", f"vs {off['wall_s']:.1f} s untracked"),
        ("throughput: bnsearch loop / bare fit", f"{t['ratio']:.2f}", "-",
         f"{t['bnsearch_samples_per_s']:.0f} vs {t['bare_samples_per_s']:.0f} samples/s"),
    ]
    if "honest_efficiency" in b:
        rows.insert(1, ("useful-work efficiency, short trials", f"{b['honest_efficiency']:.2f}", ">= 0.9",
                        f"epochs x steady epoch time / (wall x slots); ceiling {b['ceiling']:.2f}; same measure: "
                        f"bare 2 processes {bare['honest_efficiency']:.2f}, Optuna peer {peer['honest_efficiency']:.2f}"))
    for d in f.get("dry_runs", ()):
        name = Path(d["sweep"]).stem
        parts = ", ".join(f"{k} {v:.0f}" for k, v in d["slot_s"].items())
        rows.append((f"dry run {name}: useful-work efficiency", f"{d['efficiency']:.2f}", ">= 0.7" if name == "placement" else "-",
                     f"ceiling {d['ceiling']:.2f}; slot-s: {parts}"))
        rows.append((f"dry run {name}: wall", f"{d['wall_s']:.0f} s", "<= 130 s" if name == "placement" else "-",
                     f"{d['trials']} trials, {d['epochs']} epochs"))
    if "tiny_trials" in f:  # start-up weighs more on fewer trials: the targets hold at the sizes
        tiny = f["tiny_trials"]
        rows.append((f"{tiny['trials']:,} tiny trials: overhead per trial", f"{tiny['overhead_slot_s_per_trial']:.3f}",
                     "<= 0.1" if tiny["trials"] >= TINY_TRIALS else "-",
                     f"slot-s over the floor; wall {tiny['wall_s']:.0f} s, work {tiny['work_s']:.0f} s, tracked; "
                     f"untracked {f['tiny_trials_untracked']['overhead_slot_s_per_trial']:.3f}, "
                     f"Tune alone {f['tune_alone']['overhead_slot_s_per_trial']:.3f}"))
    if "read_path" in f:
        r = f["read_path"]
        rows.append((f"report rebuild, {r['runs']:,}-run store", f"{r['report_s']:.0f} s", "<= 60 s" if r["runs"] >= STORE_RUNS else "-",
                     f"{r['report_calls_per_trial']:.2f} client calls per trial"))
    if "search" in f:
        for name, r in f["search"]["strategies"].items():
            rows.append((f"search: epochs to within 0.5 pt, {name}", f"{r['median_fraction']:.0%}",
                         "<= 25%" if name == "tpe+asha" else "-", f"median {r['median_epochs']:.0f} of {f['search']['grid_epochs']} grid epochs"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure':<{width}}  {'value':>8}  {'target':>8}  detail"]
    lines += [f"{a:<{width}}  {b_:>8}  {c:>8}  {d}" for a, b_, c, d in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
