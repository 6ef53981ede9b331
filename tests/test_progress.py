"""The progress view's own logic, fed by hand (the Tune callback that feeds it runs in every sweep test)."""

import io

from bnsearch.progress import Progress, TrialState


class Terminal(io.StringIO):
    def isatty(self):
        return True


STATES = [
    TrialState("before", "finished", 3, 0.80),
    TrialState("before", "running", 1, 0.50),
    TrialState("none", "diverged", 1, float("nan")),  # NaN and failed trials are never the best
    TrialState("none", "collapsed", 2, 0.90),
    TrialState("none", "stopped_early", 1, 0.40),
]


def view(stream, planned=None):
    return Progress("search", planned or {"before": 2, "none": 2}, "val_accuracy", "max", stream=stream, every_s=3600)


def test_counts_best_replacements_and_estimate():
    v = view(io.StringIO())
    v.update(STATES)
    assert v.counts("before") == {"trials": 2, "done": 1, "running": 1, "stopped": 0, "failed": 0}
    assert v.counts("none") == {"trials": 3, "done": 0, "running": 0, "stopped": 1, "failed": 2}  # a replacement ran
    assert v.best("before") == 0.80 and v.best("none") == 0.40
    assert v.remaining_s() is not None  # 4 of 5 ended
    lines = v.lines()
    assert lines[0].startswith("search phase: ") and "8 epochs" in lines[0]
    assert lines[3].split()[1:7] == ["3", "0", "0", "1", "2", "0.4000"]
    v.update([TrialState("before", "finished", 3, 0.8)] * 2 + [TrialState("none", "finished", 3, 0.7)] * 3)
    assert v.remaining_s() is None  # all ended: no estimate


def test_plain_output_is_one_line_per_interval_and_a_terminal_is_redrawn_in_place():
    plain = io.StringIO()
    v = view(plain)
    v.update(STATES[:1])
    v.update(STATES)  # within the interval (an hour): not shown
    v.update(STATES, final=True)
    out = plain.getvalue().splitlines()
    assert len(out) == 2 and out[-1].startswith("[search ")
    assert "before 1/2 ended (1 running, 0 failed), best 0.8000; none 3/3 ended (0 running, 2 failed), best 0.4000" in out[-1]
    terminal = Terminal()
    v = view(terminal)
    assert v.live
    v.update(STATES)
    v.update(STATES, final=True)
    text = terminal.getvalue()
    assert "\x1b[4F\x1b[J" in text  # back over the 4-line block, cleared, drawn again
    assert text.rstrip().endswith(v.lines()[-1])
