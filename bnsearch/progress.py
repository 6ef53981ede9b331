"""What a running phase shows: per arm, trials done / running / stopped / failed, the best value
so far, epochs, the time spent and an estimate of what remains.

In a terminal it is a block redrawn in place about once a second; elsewhere (CI logs, `ray
submit`, a file) a plain line every ``every_s`` seconds and one at the end. Frameworks feed it
through :meth:`Progress.started` / :meth:`result` / :meth:`ended`; it imports none of them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from bnsearch.spec import FAILURES

REDRAW_S = 1.0
PLAIN_EVERY_S = 30.0


@dataclass
class _Arm:
    total: int
    running: set = field(default_factory=set)
    ended: dict = field(default_factory=dict)  # trial id -> status
    epochs: dict = field(default_factory=dict)  # trial id -> epochs reported
    best: float | None = None


class Progress:
    def __init__(self, phase: str, totals: dict[str, int], metric: str, mode: str, *, live: bool | None = None,
                 every_s: float = PLAIN_EVERY_S, stream=None):
        self.phase, self.metric, self.mode, self.every_s = phase, metric, mode, every_s
        self.arms = {arm: _Arm(total) for arm, total in totals.items()}
        self._stream = stream
        self.live = live
        self.start = time.monotonic()
        self._shown_at, self._lines_shown = float("-inf"), 0  # the first event is shown at once

    def __getstate__(self):  # Tune pickles its callbacks with the experiment: no stream in there
        return {**self.__dict__, "_stream": None}

    @property
    def stream(self):
        return self._stream or sys.__stdout__

    # --- what happens ---------------------------------------------------------------------

    def started(self, arm: str, trial: str) -> None:
        self.arms[arm].running.add(trial)
        self.tick()

    def result(self, arm: str, trial: str, epoch: int, value: float | None) -> None:
        a = self.arms[arm]
        a.epochs[trial] = epoch
        if value is not None and value == value:  # NaN (diverged) is never the best
            better = a.best is None or (value > a.best if self.mode == "max" else value < a.best)
            a.best = value if better else a.best
        self.tick()

    def ended(self, arm: str, trial: str, status: str) -> None:
        a = self.arms[arm]
        a.running.discard(trial)
        a.ended[trial] = status
        self.tick()

    # --- what is shown --------------------------------------------------------------------

    def counts(self, arm: str) -> dict[str, int]:
        a = self.arms[arm]
        statuses = list(a.ended.values())
        return {"done": statuses.count("finished"), "running": len(a.running), "stopped": statuses.count("stopped_early"),
                "failed": sum(s in FAILURES for s in statuses)}

    def remaining_s(self) -> float | None:
        """Elapsed time per ended trial times the trials still to end (None before the first ends
        and once the last has)."""
        ended = sum(len(a.ended) for a in self.arms.values())
        total = sum(a.total for a in self.arms.values())
        if not ended or ended >= total:
            return None
        return (time.monotonic() - self.start) / ended * max(total - ended, 0)

    def lines(self) -> list[str]:
        elapsed = time.monotonic() - self.start
        left = self.remaining_s()
        epochs = sum(sum(a.epochs.values()) for a in self.arms.values())
        head = f"{self.phase} phase: {_duration(elapsed)} elapsed" + (f", about {_duration(left)} left" if left is not None else "")
        rows = [f"{head}; {epochs} epochs",
                f"  {'arm':<34}{'trials':>7}{'done':>6}{'running':>9}{'stopped':>9}{'failed':>8}   best {self.metric}"]
        for arm, a in self.arms.items():
            c = self.counts(arm)
            best = f"{a.best:.4f}" if a.best is not None else "-"
            rows.append(f"  {arm[:33]:<34}{a.total:>7}{c['done']:>6}{c['running']:>9}{c['stopped']:>9}{c['failed']:>8}   {best}")
        return rows

    def line(self) -> str:
        """The plain, one-line form."""
        elapsed, left = time.monotonic() - self.start, self.remaining_s()
        parts = []
        for arm, a in self.arms.items():
            c = self.counts(arm)
            ended = c["done"] + c["stopped"] + c["failed"]
            best = f", best {a.best:.4f}" if a.best is not None else ""
            parts.append(f"{arm} {ended}/{a.total} ended ({c['running']} running, {c['failed']} failed){best}")
        eta = f", about {_duration(left)} left" if left is not None else ""
        return f"[{self.phase} {_duration(elapsed)}{eta}] " + "; ".join(parts)

    def tick(self, *, force: bool = False) -> None:
        now = time.monotonic()
        live = self.stream.isatty() if self.live is None else self.live
        if not force and now - self._shown_at < (REDRAW_S if live else self.every_s):
            return
        self._shown_at = now
        if live:
            lines = self.lines()
            up = f"\x1b[{self._lines_shown}F\x1b[J" if self._lines_shown else ""  # back to the block's top, clear
            self.stream.write(up + "\n".join(lines) + "\n")
            self._lines_shown = len(lines)
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.tick(force=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
