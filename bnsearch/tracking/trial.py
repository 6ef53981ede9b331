"""Trial side: the child run of one trial, found by its key or created under the parent run."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from bnsearch.identity import TrialId
from bnsearch.spec import COMPLETED
from bnsearch.tracking.store import (
    HISTORY_FILE, UNREACHABLE, as_params, encode_history, find_run, read_history, transient, with_retries,
)

PENDING_FILE = "pending_metrics.json"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch request
# A trial's client: about 10 s per request before its metrics wait for the next epoch.
TRIAL_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrialRun:
    """The child run of one trial.

    A tracking server that stops answering does not stop training: an epoch's metrics that
    cannot be sent wait, and go with the next epoch's batch or with :meth:`flush`. Every value
    logged is also kept in :attr:`history`, which :meth:`finish` writes as one file, so that
    reading the run back costs one request, not one per metric."""

    def __init__(self, client: MlflowClient, run, history: dict[str, dict[int, float]] | None = None):
        self.client, self.run = client, run
        self.run_id = run.info.run_id
        self.pending: list[Metric] = []
        self.history: dict[str, dict[int, float]] = history or {}
        self.written = 0  # how many values the history file holds
        self.warned = False

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
            run = client.create_run(experiment_id, run_name=trial.run_name, tags=all_tags)
            if params:
                client.log_batch(run.info.run_id, params=as_params(params))
            return cls(client, run)
        if run.info.status != RunStatus.to_string(RunStatus.RUNNING) and run.data.tags.get("status") not in COMPLETED:
            client.update_run(run.info.run_id, status="RUNNING")
        # A retried or resumed trial goes on with what its run already holds (rare: read in full).
        return cls(client, run, read_history(client, run))

    @property
    def completed(self) -> bool:
        """Whether this trial already ran to its end (a crash does not count)."""
        return self.run.data.tags.get("status") in COMPLETED

    def final_metrics(self) -> dict[str, float]:
        """The last value of every metric the trial logged."""
        return dict(self.run.data.metrics)

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        """Send this epoch's metrics, and any an outage held back, in one batched request;
        if the server does not answer, keep them for the next try. A resent batch repeats
        identical rows (same key, value, timestamp, step), which the store keeps once."""
        timestamp = int(time.time() * 1000)
        rows = [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
        self._remember(rows)
        self.pending += rows
        try:
            self._send()
        except UNREACHABLE as error:
            if not transient(error):
                raise
            if not self.warned:
                print(f"bnsearch: MLflow unreachable ({type(error).__name__}); training goes on, "
                      f"{len(self.pending)} metric values held for the next try", file=sys.stderr, flush=True)
                self.warned = True

    def log_files(self, files: Mapping[str, bytes]) -> None:
        """Log each ``{name: content}`` as an artifact of this run, in one upload."""
        if not files:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                (Path(tmp) / name).write_bytes(content)
            with_retries(lambda: self.client.log_artifacts(self.run_id, tmp), f"logging the files of run {self.run_id}")

    def flush(self, timeout_s: float | None = None) -> None:
        """Send everything held back, retrying until ``timeout_s``; then raise."""
        with_retries(self._send, f"sending {len(self.pending)} held-back metric values of run {self.run_id}", timeout_s)

    def finish(self) -> None:
        """Before the trial's last report and when its process is done with it (a scheduler's
        stop, a crash it survives): everything held back sent, and the whole history written
        as one file (again only if it grew)."""
        self.flush()
        size = sum(map(len, self.history.values()))
        if size > self.written:
            self.log_files({HISTORY_FILE: json.dumps(encode_history(self.history)).encode()})
            self.written = size

    def save_pending(self, directory: str | Path) -> None:
        """Keep what is held back in a checkpoint, so a trial resumed from it still sends it."""
        rows = [[m.key, m.value, m.timestamp, m.step] for m in self.pending]
        (Path(directory) / PENDING_FILE).write_text(json.dumps(rows))

    def load_pending(self, directory: str | Path) -> None:
        file = Path(directory) / PENDING_FILE
        if file.is_file():
            held = [Metric(*row) for row in json.loads(file.read_text())]
            self._remember(held)
            self.pending = held + self.pending

    def _remember(self, rows: list[Metric]) -> None:
        for m in rows:
            self.history.setdefault(m.key, {})[m.step] = m.value

    def _send(self) -> None:
        while self.pending:
            batch = self.pending[:MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=batch)
            del self.pending[:len(batch)]
