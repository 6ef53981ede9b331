"""Old trial checkpoints go only once no experiment snapshot can still name them
(bnsearch.trainable.checkpoints), on real Tune checkpoints in a folder."""

from types import SimpleNamespace

import pyarrow.fs
from ray import tune

from bnsearch.trainable.checkpoints import PruneCheckpoints


def saved(folder, index: int) -> tune.Checkpoint:
    path = folder / f"checkpoint_{index:06d}"
    path.mkdir(parents=True)
    (path / "state").write_text(str(index))
    return tune.Checkpoint.from_directory(str(path))


def left(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_superseded_checkpoint_goes_only_after_two_snapshots_and_the_newest_two_stay(tmp_path):
    prune, trial = PruneCheckpoints(keep=2), SimpleNamespace(trial_id="t1")
    for index in range(5):
        prune.on_checkpoint(iteration=index, trials=[trial], trial=trial, checkpoint=saved(tmp_path, index))
    assert len(left(tmp_path)) == 5  # no snapshot yet: the last one written may name any of them
    prune.get_state()
    assert len(left(tmp_path)) == 5  # this snapshot names the newest, but may not be on storage yet
    prune.get_state()
    assert left(tmp_path) == ["checkpoint_000003", "checkpoint_000004"]
    prune.on_checkpoint(iteration=5, trials=[trial], trial=trial, checkpoint=saved(tmp_path, 5))
    prune.get_state()
    assert left(tmp_path) == ["checkpoint_000003", "checkpoint_000004", "checkpoint_000005"]
    prune.get_state()
    assert left(tmp_path) == ["checkpoint_000004", "checkpoint_000005"]


def trial_in(experiment, trial_id: str, checkpoint=None) -> SimpleNamespace:
    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), experiment_fs_path=str(experiment))
    return SimpleNamespace(trial_id=trial_id, checkpoint=checkpoint, storage=storage)


def test_at_the_end_each_trial_keeps_its_latest_checkpoint_also_those_a_killed_driver_left(tmp_path):
    prune = PruneCheckpoints(keep=2)
    seen, restored, replayed, unknown = (tmp_path / name for name in ("seen", "restored", "replayed", "unknown"))
    trial = trial_in(tmp_path, "seen")
    for index in range(4):
        trial.checkpoint = saved(seen, index)
        prune.on_checkpoint(iteration=index, trials=[trial], trial=trial, checkpoint=trial.checkpoint)
    older = [saved(restored, index) for index in range(3)]  # saved before a restore: never seen
    (restored / "result.json").write_text("{}")
    for index in range(2):
        saved(replayed, index)  # a trial that ended before the kill, replayed since (with no checkpoint)
        saved(unknown, index)  # one the restored snapshot did not know: started again under another id
    (tmp_path / "experiment_state.json").write_text("{}")
    prune.on_experiment_end(trials=[trial, trial_in(tmp_path, "restored", older[-1]), trial_in(tmp_path, "replayed")])
    assert left(seen) == ["checkpoint_000003"]
    assert left(restored) == ["checkpoint_000002", "result.json"]
    assert left(replayed) == left(unknown) == []
    assert "experiment_state.json" in left(tmp_path)
