"""Trial side: the child run of one trial, found by its key or created under the parent run."""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from bnsearch.identity import TrialId
from bnsearch.spec import COMPLETED
from bnsearch.tracking.store import (
    HISTORY_FILE, RETRY_TIMEOUT_S, UNREACHABLE, as_params, as_stored, encode_history, find_run, first_epoch_only, run_history, transient, with_retries,
    write_artifacts,
)

PENDING_FILE = "pending_metrics.json"
# Tune ends a stopped trial's process without waiting for the trial's thread, which finishes its
# run on the way out; Ray runs atexit handlers as an actor exits, so the process finishes the runs
# it still holds itself. Ray ends the process a second or two later regardless: enough for the
# usual last batch and history file (milliseconds), not for a store that stalls.
_UNFINISHED: weakref.WeakSet = weakref.WeakSet()
EXIT_FLUSH_S = 5.0
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch request
# After each batch the sender waits this long for the next epochs (cut short by flush and
# finish), so that fast epochs share a request: on SQLite one epoch's batch of 35 metrics costs
# 10 ms of CPU, five epochs in one 4 ms each; through a server, one request instead of five.
# An epoch reaches the store, and the MLflow UI, at most this much later.
SEND_EVERY_S = 2.0
# A trial's client: about 10 s per request before its metrics wait for the next epoch.
TRIAL_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _log_params_once(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log ``params``; a request the HTTP client resent after a timeout races its first try,
    which the server was still writing, and fails on the duplicate: that is success when the run
    now holds exactly these values."""
    wanted = as_params(params)
    try:
        client.log_batch(run_id, params=wanted)
    except MlflowException:
        logged = client.get_run(run_id).data.params
        if any(logged.get(p.key) != p.value for p in wanted):
            raise


class TrialRun:
    """The child run of one trial.

    Metrics leave from a thread of their own, so training never waits for the store: an epoch's
    values are queued and sent in one batch with whatever else is queued (at most every
    :data:`SEND_EVERY_S` while nobody waits for them), and a tracking server
    that stops answering only makes the queue wait (a checkpoint keeps it: :meth:`save_pending`).
    :meth:`flush` waits until everything is in. Every value logged is also kept in
    :attr:`history`, which :meth:`finish` writes as one file, so that reading the run back costs
    one request, not one per metric."""

    def __init__(self, client: MlflowClient, run, history: dict[str, dict[int, float]] | None = None):
        self.client, self.run = client, run
        self.run_id = run.info.run_id
        self.pending: list[Metric] = []
        self.history: dict[str, dict[int, float]] = history or {}
        self.written = 0  # how many values the history file holds
        self.warned = False
        self._changed = threading.Condition()  # guards pending; notified when it grows or shrinks
        self._sender: threading.Thread | None = None
        self._closed = False
        self._flushing = 0  # callers waiting in flush(): the sender does not wait for more epochs meanwhile
        self._failure: Exception | None = None  # a request the store rejected, raised in the trial's thread

    @classmethod
    def open(cls, tracking_uri: str, experiment_id: str, parent_run_id: str | None, trial: TrialId,
             params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> TrialRun:
        """The run of ``trial`` (found by its key, else created under the parent run, tagged with
        its identity and ``tags``, ``params`` logged)."""
        # Give up on one request within seconds rather than MLflow's minutes of retries: the
        # epoch's metrics wait in `pending` and training goes on.
        for name, value in TRIAL_HTTP_SETTINGS.items():
            os.environ.setdefault(name, value)
        client = MlflowClient(tracking_uri)
        return with_retries(lambda: cls._open(client, experiment_id, parent_run_id, trial, params, tags),
                            f"opening the MLflow run of {trial.key}")

    @classmethod
    def _open(cls, client, experiment_id, parent_run_id, trial: TrialId, params, tags) -> TrialRun:
        run = find_run(client, experiment_id, trial_key=trial.key)
        if run is None:
            all_tags = {MLFLOW_RUN_NAME: trial.run_name, "trial_key": trial.key, "status": "running", **trial.tags(), **(tags or {})}
            if parent_run_id:
                all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
            # A retried creation may make a spare; readers take the run with metrics, this one.
            run = client.create_run(experiment_id, run_name=trial.run_name, tags=all_tags)
        elif run.info.status != RunStatus.to_string(RunStatus.RUNNING) and run.data.tags.get("status") not in COMPLETED:
            client.update_run(run.info.run_id, status="RUNNING")
        missing = {k: v for k, v in (params or {}).items() if k not in run.data.params}
        if missing:  # also when a retry finds the run its first try created before logging them failed
            _log_params_once(client, run.info.run_id, missing)
        # A retried or resumed trial goes on with what its run already holds (a completed one is only replayed).
        completed = run.data.tags.get("status") in COMPLETED
        return cls(client, run, None if completed else run_history(client, run))

    @property
    def completed(self) -> bool:
        """Whether this trial already ran to its end (a crash does not count)."""
        return self.run.data.tags.get("status") in COMPLETED

    def final_metrics(self) -> dict[str, float]:
        """The last value of every metric the trial logged."""
        return dict(self.run.data.metrics)

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        """Queue this epoch's metrics for the sender thread and return at once. A batch resent
        after a failed try repeats identical rows (same key, value, timestamp, step), which the
        store keeps once."""
        self._raise_failure()
        timestamp = int(time.time() * 1000)
        rows = [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
        with self._changed:
            self._remember(rows)
            self.pending += rows
            self._closed = False
            self._changed.notify_all()
        _UNFINISHED.add(self)
        self._start_sender()

    def log_files(self, files: Mapping[str, bytes], timeout_s: float | None = None) -> None:
        """Log each ``{name: content}`` as an artifact of this run, no request to the tracking
        store (a server's artifact store takes one upload), retried for at most ``timeout_s``
        (default: the retry timeout)."""
        if files:
            with_retries(lambda: write_artifacts(self.client, self.run.info.artifact_uri, files),
                         f"logging the files of run {self.run_id}", timeout_s)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything queued is in the store, at most ``timeout_s`` (default: the
        retry timeout); then raise."""
        self._start_sender()
        with self._changed:
            self._flushing += 1
            self._changed.notify_all()
            try:
                done = self._changed.wait_for(lambda: not self.pending or self._failure,
                                              timeout=RETRY_TIMEOUT_S if timeout_s is None else timeout_s)
            finally:
                self._flushing -= 1
        self._raise_failure()
        if not done:
            raise RuntimeError(f"MLflow did not answer while sending {len(self.pending)} held-back metric values of run {self.run_id}")

    def finish(self, timeout_s: float | None = None) -> None:
        """Before the trial's last report and when its process is done with it (a scheduler's
        stop, a crash it survives, the process's exit): everything held back sent (waiting at
        most ``timeout_s`` in all, default the retry timeout for each step), the sender thread
        ended, and the whole history written as one file (again only if it grew; not for a first
        epoch alone, which the run's latest metrics hold; a file that cannot be written only costs
        readers the slower path)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        sender = self._sender
        try:
            self.flush(left())
        finally:
            with self._changed:
                self._closed = True  # the sender ends, even with values left that a checkpoint kept
                self._changed.notify_all()
            if sender is not None:
                sender.join(timeout=30 if deadline is None else left())
        size = sum(map(len, self.history.values()))
        if size > self.written and not first_epoch_only(step for steps in self.history.values() for step in steps):
            try:
                self.log_files({HISTORY_FILE: json.dumps(encode_history(self.history)).encode()}, left())
                self.written = size
            except (RuntimeError, *UNREACHABLE) as error:
                print(f"bnsearch: the history file of run {self.run_id} was not written ({error}); it reads back "
                      "one request per metric", file=sys.stderr, flush=True)
        _UNFINISHED.discard(self)

    def save_pending(self, directory: str | Path) -> None:
        """Keep what is not in the store yet in a checkpoint, so a trial resumed from it still sends it."""
        with self._changed:
            rows = [[m.key, m.value, m.timestamp, m.step] for m in self.pending]
        (Path(directory) / PENDING_FILE).write_text(json.dumps(rows))

    def load_pending(self, directory: str | Path) -> None:
        file = Path(directory) / PENDING_FILE
        if file.is_file():
            held = [Metric(*row) for row in json.loads(file.read_text())]
            with self._changed:
                assert self._sender is None, "held-back values load before the first epoch, while nothing is being sent"
                self._remember(held)
                self.pending[:0] = held

    def _remember(self, rows: list[Metric]) -> None:
        for m in rows:
            self.history.setdefault(m.key, {})[m.step] = as_stored(m.value)  # the file says what the store says

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _start_sender(self) -> None:
        with self._changed:
            if self.pending and self._sender is None and self._failure is None:
                self._closed = False
                self._sender = threading.Thread(target=self._send_until_closed, name=f"mlflow-{self.run_id[:8]}", daemon=True)
                self._sender.start()

    def _send_until_closed(self) -> None:
        """The sender thread: everything queued, in batches, retried with growing pauses while
        the server does not answer, until the run is finished; an error it cannot retry is
        raised in the trial's thread at its next call."""
        failure = None
        try:
            self._send_queued()
        except Exception as error:  # noqa: BLE001 -- whatever it is, the trial must hear of it
            failure = error
        finally:
            with self._changed:
                self._failure = self._failure or failure
                self._sender = None
                restart = bool(self.pending) and not self._closed and self._failure is None
                self._changed.notify_all()
            if restart:  # values queued while this thread was on its way out
                self._start_sender()

    def _send_queued(self) -> None:
        pause = 1.0
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self.pending or self._closed)
                if self._closed or not self.pending:
                    return
                batch = self.pending[:MAX_METRICS_PER_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except UNREACHABLE as error:
                if not transient(error):
                    raise
                if not self.warned:
                    print(f"bnsearch: MLflow unreachable ({type(error).__name__}); training goes on, "
                          f"{len(self.pending)} metric values held for the next try", file=sys.stderr, flush=True)
                    self.warned = True
                with self._changed:  # a pause that finish() can cut short
                    self._changed.wait_for(lambda: self._closed, timeout=pause)
                pause = min(pause * 2, 30.0)
                continue
            pause = 1.0
            with self._changed:
                del self.pending[:len(batch)]  # only this thread removes, and only from the front
                self._changed.notify_all()
                self._changed.wait_for(lambda: self._closed or self._flushing or len(self.pending) >= MAX_METRICS_PER_BATCH,
                                       timeout=SEND_EVERY_S)  # the next epochs gather into one request


@atexit.register
def _finish_at_exit() -> None:
    deadline = time.monotonic() + EXIT_FLUSH_S  # for all of them: a store that is gone must not hold the exit
    for run in list(_UNFINISHED):
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{EXIT_FLUSH_S:.0f} s spent on other runs")
            run.finish(timeout_s=left)
        except Exception as error:  # noqa: BLE001 -- the process is ending: say what is lost and go on
            print(f"bnsearch: run {run.run_id} was not finished as its process ended ({error})", file=sys.stderr, flush=True)
