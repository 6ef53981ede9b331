"""The progress view's own logic, fed by hand (the Tune callback that feeds it runs in every sweep test)."""

import io
import pickle

from bnsearch.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def fed(stream, live=None):
    view = Progress("search", {"before": 2, "none": 2}, "val_accuracy", "max", live=live, stream=stream, every_s=3600)
    view.started("before", "t1")
    view.result("before", "t1", 1, 0.50)
    view.result("before", "t1", 2, 0.80)
    view.started("none", "t2")
    view.result("none", "t2", 1, float("nan"))  # diverged: never the best
    view.ended("none", "t2", "diverged")
    view.ended("before", "t1", "finished")
    view.started("before", "t3")
    return view


def test_counts_best_and_estimate():
    view = fed(io.StringIO())
    assert view.counts("before") == {"done": 1, "running": 1, "stopped": 0, "failed": 0}
    assert view.counts("none") == {"done": 0, "running": 0, "stopped": 0, "failed": 1}
    assert view.arms["before"].best == 0.80 and view.arms["none"].best is None
    assert view.remaining_s() is not None  # 2 of 4 ended: as long again
    lines = view.lines()
    assert lines[0].startswith("search phase: ") and "3 epochs" in lines[0]
    assert "0.8000" in lines[2] and lines[3].split()[1:6] == ["2", "0", "0", "0", "1"]


def test_plain_output_is_one_line_per_interval_and_a_terminal_is_redrawn_in_place():
    plain = io.StringIO()
    view = fed(plain)
    view.close()
    out = plain.getvalue().splitlines()
    assert len(out) == 2  # the first event, then the final line: the interval (an hour) never passed
    assert out[-1].startswith("[search ") and "before 1/2 ended (1 running, 0 failed), best 0.8000" in out[-1]
    terminal = Terminal()
    view = fed(terminal)
    view.close()
    text = terminal.getvalue()
    assert "\x1b[4F\x1b[J" in text  # back over the 4-line block, cleared, drawn again
    assert text.rstrip().endswith(view.lines()[-1])


def test_it_pickles_without_its_stream():
    view = fed(io.StringIO())
    again = pickle.loads(pickle.dumps(view))
    assert again.counts("before") == view.counts("before") and again._stream is None
