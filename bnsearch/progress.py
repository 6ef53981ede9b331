"""What a running phase shows: per arm, trials done / running / stopped / failed, the best value
so far, epochs, the time spent and an estimate of what remains.

In a terminal it is a block redrawn in place about once a second; elsewhere (CI logs, `ray
submit`, a file) a plain line every ``every_s`` seconds and one at the end. It is recounted from
scratch at every update from the trials as they stand (:class:`TrialState`), so a restored phase,
a replaced trial or a missed event cannot skew it. It imports no framework.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from bnsearch.spec import FAILURES

REDRAW_S = 1.0
PLAIN_EVERY_S = 30.0


@dataclass(frozen=True)
class TrialState:
    arm: str
    status: str  # "pending", "running", or how it ended (finished, stopped_early, diverged, ...)
    epochs: int
    best: float | None  # the best value of the metric it reported


class Progress:
    def __init__(self, phase: str, planned: dict[str, int], metric: str, mode: str, *, live: bool | None = None,
                 every_s: float = PLAIN_EVERY_S, stream: TextIO | None = None):
        self.phase, self.planned, self.metric, self.mode, self.every_s = phase, dict(planned), metric, mode, every_s
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.trials: list[TrialState] = []
        self.start = time.monotonic()
        self._shown_at, self._lines_shown = float("-inf"), 0  # the first update is shown at once

    # --- counting -------------------------------------------------------------------------

    def arms(self) -> list[str]:
        return list(dict.fromkeys([*self.planned, *(t.arm for t in self.trials)]))

    def counts(self, arm: str) -> dict[str, int]:
        mine = [t for t in self.trials if t.arm == arm]
        statuses = [t.status for t in mine]
        return {"trials": max(self.planned.get(arm, 0), len(mine)),  # crashed trials' replacements count too
                "done": statuses.count("finished"), "running": statuses.count("running"),
                "stopped": statuses.count("stopped_early"), "failed": sum(s in FAILURES for s in statuses)}

    def best(self, arm: str) -> float | None:
        values = [t.best for t in self.trials if t.arm == arm and t.best is not None and t.best == t.best
                  and t.status not in FAILURES]  # NaN and failed trials are never the best
        return (max if self.mode == "max" else min)(values) if values else None

    def remaining_s(self) -> float | None:
        """Elapsed time per ended trial times the trials still to end (None before the first ends
        and once the last has)."""
        total = sum(self.counts(arm)["trials"] for arm in self.arms())
        ended = sum(t.status not in ("pending", "running") for t in self.trials)
        if not ended or ended >= total:
            return None
        return (time.monotonic() - self.start) / ended * (total - ended)

    # --- showing --------------------------------------------------------------------------

    def lines(self) -> list[str]:
        left = self.remaining_s()
        head = f"{self.phase} phase: {_duration(time.monotonic() - self.start)} elapsed"
        head += (f", about {_duration(left)} left" if left is not None else "") + f"; {sum(t.epochs for t in self.trials)} epochs"
        rows = [head, f"  {'arm':<34}{'trials':>7}{'done':>6}{'running':>9}{'stopped':>9}{'failed':>8}   best {self.metric}"]
        for arm in self.arms():
            c, best = self.counts(arm), self.best(arm)
            rows.append(f"  {arm[:33]:<34}{c['trials']:>7}{c['done']:>6}{c['running']:>9}{c['stopped']:>9}{c['failed']:>8}   "
                        + (f"{best:.4f}" if best is not None else "-"))
        return rows

    def line(self) -> str:
        """The plain, one-line form."""
        left = self.remaining_s()
        parts = []
        for arm in self.arms():
            c, best = self.counts(arm), self.best(arm)
            ended = c["done"] + c["stopped"] + c["failed"]
            parts.append(f"{arm} {ended}/{c['trials']} ended ({c['running']} running, {c['failed']} failed)"
                         + (f", best {best:.4f}" if best is not None else ""))
        eta = f", about {_duration(left)} left" if left is not None else ""
        return f"[{self.phase} {_duration(time.monotonic() - self.start)}{eta}] " + "; ".join(parts)

    def due(self) -> bool:
        """Whether the next update would be shown (so a caller can skip gathering the trials)."""
        return time.monotonic() - self._shown_at >= (REDRAW_S if self.live else self.every_s)

    def update(self, trials: list[TrialState], *, final: bool = False) -> None:
        self.trials = list(trials)
        if not (final or self.due()):
            return
        self._shown_at = time.monotonic()
        if self.live:
            lines = self.lines()
            up = f"\x1b[{self._lines_shown}F\x1b[J" if self._lines_shown else ""  # back to the block's top, clear
            self.stream.write(up + "\n".join(lines) + "\n")
            self._lines_shown = len(lines)
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
