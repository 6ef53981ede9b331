"""Old trial checkpoints deleted only where no saved experiment state can still point to them.

Tune's own ``CheckpointConfig(num_to_keep=k)`` deletes a trial's oldest checkpoint as the new
one comes in, and saves its experiment state (the snapshot a killed driver's rerun restores
from) only every 10 s or more: a trial that checkpoints faster than that gets ahead of the last
snapshot, which then names a checkpoint already gone, and the restored trial fails ("Could not
recover from checkpoint as it does not exist on storage anymore") after all its retries. Tune
forces a snapshot once a trial has checkpointed k times, but only after the deletion.

So Tune keeps every checkpoint (``num_to_keep=None``), and this callback deletes the old ones
itself, once two snapshots written since name newer ones: a snapshot's upload starts as it is
written and is done by the next one unless storage is slower than Tune's snapshot period (which
Tune warns about), so the older of the two is on storage by then. Without ``num_to_keep`` Tune
forces no snapshot; it writes one every 10 s or more, and a killed driver's rerun resumes each
trial from the checkpoint the last one names."""

from __future__ import annotations

import logging
from collections import deque

import pyarrow.fs
from ray import tune

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"  # how Tune names a trial's checkpoint folders


def delete(checkpoint: tune.Checkpoint) -> None:
    """Delete a checkpoint folder; one already gone is no error, and a failure only warns (the
    sweep goes on; the folder takes space)."""
    try:
        checkpoint.filesystem.delete_dir(checkpoint.path)
    except FileNotFoundError:
        pass
    except OSError as error:
        logger.warning("could not delete the old checkpoint %s: %s", checkpoint.path, error)


class PruneCheckpoints(tune.Callback):
    """Each trial keeps its ``keep`` newest checkpoints, and any older one until two experiment
    snapshots have been written since it was superseded; at the experiment's end (after Tune's
    last snapshot, which it waits for) only each trial's latest checkpoint stays."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._newest: dict[str, deque[tune.Checkpoint]] = {}  # a trial's id: its `keep` newest, oldest first
        self._superseded: deque[tuple[int, tune.Checkpoint]] = deque()  # (snapshots written before, checkpoint)
        self._snapshots = 0

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        newest = self._newest.setdefault(trial.trial_id, deque())
        newest.append(checkpoint)
        if len(newest) > self.keep:
            self._superseded.append((self._snapshots, newest.popleft()))

    def get_state(self) -> None:
        # Tune calls this as it writes each experiment snapshot: the one hook a callback has there.
        self._snapshots += 1
        while self._superseded and self._superseded[0][0] <= self._snapshots - 2:
            delete(self._superseded.popleft()[1])
        return None  # nothing to restore: a restored run prunes what it finds at its end

    def on_experiment_end(self, trials, **info):
        self._superseded.clear()  # all go now, with what a killed driver left behind:
        if not trials:
            return
        # every checkpoint in the experiment's trial folders but each trial's latest, including
        # those of a trial the restored snapshot did not know (started again under another id);
        # one listing of the experiment, not one per trial (a request each on cloud storage)
        latest = {trial.checkpoint.path.rstrip("/") for trial in trials if trial.checkpoint}
        filesystem, experiment = trials[0].storage.storage_filesystem, trials[0].storage.experiment_fs_path.rstrip("/")
        for entry in filesystem.get_file_info(pyarrow.fs.FileSelector(experiment, recursive=True)):
            path = entry.path.rstrip("/")
            in_trial_folder = path.count("/") == experiment.count("/") + 2  # <experiment>/<trial>/checkpoint_…
            if in_trial_folder and entry.base_name.startswith(CHECKPOINT_PREFIX) and path not in latest:
                delete(tune.Checkpoint(path, filesystem=filesystem))
