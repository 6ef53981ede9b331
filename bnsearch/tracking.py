"""MLflow: one experiment per sweep, one parent run per invocation, one child run per trial.
The only MLflow import.

Every trial run carries a deterministic key (sweep id / phase / trial id) and is looked up by
it before one is created, so a trial retried from a checkpoint, or resumed after the driver
restarts, logs into the run it already has instead of a duplicate. The driver creates the store,
experiment and parent run before any trial starts (concurrent first use of a fresh SQLite store
races its schema migration), and it closes every child run with its final status.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from bnsearch.spec import COMPLETED

# The report fetches a file per replicate run: one tqdm bar each would bury what the driver prints.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A new SQLite store announces its schema migration at INFO, twice, on every first run: not news.
for _name in ("mlflow.store.db.utils", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)

PARENT_RUN_NAME = "sweep"
MAX_TAG_LENGTH = 8000  # MLflow's limit on a tag value
PENDING_FILE = "pending_metrics.json"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch request
# A trial's client: about 10 s per request before its metrics wait for the next epoch.
TRIAL_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# How long a trial or the driver keeps retrying a tracking server that does not answer.
RETRY_TIMEOUT_S = float(os.environ.get("BNSEARCH_TRACKING_RETRY_TIMEOUT_S", 600))
UNREACHABLE = (MlflowException, OSError, requests.RequestException)
# What MLflow's own run status says for each of ours (spec.COMPLETED, and a crash): only a crash is FAILED.
_RUN_STATUS = {status: "FINISHED" for status in COMPLETED} | {"failed": "FAILED"}


DEFAULT_STORAGE = "bnsearch-results"


def default_tracking_uri(storage: str | Path) -> str:
    """A local SQLite store beside the sweep's results."""
    return f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None = None, storage: str | Path = DEFAULT_STORAGE) -> str:
    """The URI given, else ``$MLFLOW_TRACKING_URI``, else the local store under ``storage``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(storage)


def local_artifact_root(tracking_uri: str, storage: str | Path) -> Path | None:
    """Artifacts of a local SQLite store live beside it; a tracking server decides its own."""
    return Path(storage).resolve() / "artifacts" if tracking_uri.startswith("sqlite:") else None


def transient(error: Exception) -> bool:
    """A server that is down or overloaded, not a request MLflow rejects as wrong."""
    return not isinstance(error, MlflowException) or error.get_http_status_code() >= 500


def with_retries(call: Callable[[], Any], what: str, timeout_s: float | None = None) -> Any:
    """``call()``, retried with growing pauses while the tracking store does not answer."""
    deadline = time.monotonic() + (RETRY_TIMEOUT_S if timeout_s is None else timeout_s)
    pause = 1.0
    while True:
        try:
            return call()
        except UNREACHABLE as error:
            if not transient(error) or time.monotonic() + pause > deadline:
                raise RuntimeError(f"MLflow did not answer while {what}: {error}") from error
            time.sleep(pause)
            pause = min(pause * 2, 30.0)


def check_reachable(tracking_uri: str, attempts: int = 3) -> str | None:
    """None if a tracking server answers at ``tracking_uri`` (or it is a local store), else why not."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    reason = ""
    for attempt in range(attempts):
        try:
            response = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=3)
            if response.ok:
                return None
            reason = f"HTTP {response.status_code} from /health"
        except requests.RequestException as error:
            reason = type(error).__name__
        time.sleep(attempt)
    return reason


def _find_run(client: MlflowClient, experiment_id: str, **tags: str):
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=2)
    return runs[0] if runs else None


def _params(values: Mapping[str, Any]) -> list[Param]:
    # JSON for everything but plain strings, so parse_param() gives back the typed value.
    return [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in sorted(values.items())]


def parse_param(text: str) -> Any:
    """A logged param's value: numbers, booleans and lists come back typed, strings as they are."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class SweepTracker:
    """Driver side: experiment, parent run, closing child runs, reading a sweep back."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | Path | None = None, create: bool = True):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None and not create:
            raise LookupError(f"no experiment {experiment!r} in {tracking_uri}")
        if found is None:
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id
        self.parent_run_id: str | None = None

    def start_sweep(self, sweep_id: str, params: Mapping[str, Any], tags: Mapping[str, str], artifacts: Mapping[str, Any]) -> str:
        """Find or create the parent run of ``sweep_id``; log params, tags and JSON artifacts."""
        run = _find_run(self.client, self.experiment_id, sweep_id=sweep_id, role="sweep")
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=sweep_id, tags={"sweep_id": sweep_id, "role": "sweep", **tags})
            self.client.log_batch(run.info.run_id, params=_params(params))
            for name, content in artifacts.items():
                self.client.log_dict(run.info.run_id, content, name)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.parent_run_id = run.info.run_id
        return self.parent_run_id

    def close_trial(self, trial_key: str, status: str, run_name: str = "") -> None:
        """Set a child run's final status (tag and MLflow status); create it if the trial
        died before it could."""
        with_retries(lambda: self._close_trial(trial_key, status, run_name), f"closing the run of {trial_key}")

    def _close_trial(self, trial_key: str, status: str, run_name: str) -> None:
        run = _find_run(self.client, self.experiment_id, trial_key=trial_key)
        if run is None:
            run = TrialRun.open(self.tracking_uri, self.experiment_id, self.parent_run_id, trial_key, run_name or trial_key).run
        elif run.info.status != "RUNNING" and run.data.tags.get("status") == status:
            return  # closed already (a trial replayed after a driver restart): keep its end time
        self.client.set_tag(run.info.run_id, "status", status)
        self.client.set_terminated(run.info.run_id, _RUN_STATUS[status])

    def close_orphans(self) -> int:
        """Mark child runs still RUNNING (their trial never reported an end) as failed."""
        return with_retries(self._close_orphans, "closing orphaned runs")

    def _close_orphans(self) -> int:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' and attributes.status = 'RUNNING'",
        )
        for run in runs:
            self.client.set_tag(run.info.run_id, "status", "failed")
            self.client.set_terminated(run.info.run_id, "FAILED")
        return len(runs)

    def end_sweep(self, ok: bool) -> None:
        self.client.set_terminated(self.parent_run_id, "FINISHED" if ok else "FAILED")

    def unfinished_sweep(self, spec: Mapping[str, Any], alive: Callable[[Mapping[str, str]], bool]) -> str | None:
        """The latest sweep of this experiment that its driver never closed (a driver that
        ends, even by an exception, closes its parent run; a killed one cannot), if it was
        started from the same spec and ``alive(tags)`` says its driver is gone; else None."""
        runs = self.client.search_runs([self.experiment_id], filter_string="tags.role = 'sweep' and attributes.status = 'RUNNING'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        if not runs or alive(runs[0].data.tags):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            recorded = json.loads(Path(self.client.download_artifacts(runs[0].info.run_id, "spec.json", tmp)).read_text())
        return runs[0].data.tags["sweep_id"] if recorded == json.loads(json.dumps(spec)) else None

    def open_sweep(self, sweep_id: str | None = None) -> str:
        """Attach to an existing sweep's parent run (the latest one when ``sweep_id`` is None);
        return its sweep id."""
        tags = {"role": "sweep", **({"sweep_id": sweep_id} if sweep_id else {})}
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise LookupError(f"no sweep {sweep_id!r} in this experiment" if sweep_id else "no sweep in this experiment yet")
        self.parent_run_id = runs[0].info.run_id
        return runs[0].data.tags["sweep_id"]

    def child_runs(self):
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}'", max_results=50000)

    def trial_records(self) -> list[dict[str, Any]]:
        """Every child run as plain data: run id, tags, typed params and each metric's
        per-epoch history ``{key: {step: value}}``."""
        records = []
        for run in self.child_runs():
            history = {
                key: {m.step: m.value for m in self.client.get_metric_history(run.info.run_id, key)}
                for key in run.data.metrics
            }
            params = {k: parse_param(v) for k, v in run.data.params.items()}
            records.append({"run_id": run.info.run_id, "tags": dict(run.data.tags), "params": params, "history": history})
        return records

    def run_file(self, run_id: str, name: str) -> bytes | None:
        """The bytes of one artifact of a trial run; None if it has none by that name."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return Path(self.client.download_artifacts(run_id, name, tmp)).read_bytes()
            except (MlflowException, OSError):
                return None

    def read_json(self, name: str) -> Any:
        """A JSON artifact of the parent run (``spec.json``, ``versions.json``)."""
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(self.client.download_artifacts(self.parent_run_id, name, tmp)).read_text())

    def download(self, name: str, directory: str | Path) -> Path | None:
        """Download one artifact of the parent run; None if it has none by that name."""
        if name not in {a.path for a in self.client.list_artifacts(self.parent_run_id)}:
            return None
        return Path(self.client.download_artifacts(self.parent_run_id, name, str(directory)))

    def log_files(self, directory: str | Path) -> None:
        """Log every file under ``directory`` on the parent run, keeping relative paths."""
        self.client.log_artifacts(self.parent_run_id, str(directory))

    def tags(self) -> dict[str, str]:
        """The parent run's tags."""
        return dict(self.client.get_run(self.parent_run_id).data.tags)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.parent_run_id, key, value)

    def log_summary(self, metrics: Mapping[str, float], tags: Mapping[str, str], description: str) -> None:
        """The sweep's results where the MLflow UI shows them without opening a file: metrics and
        tags on the parent run (keys made valid MLflow names) and its description (Markdown)."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_run_id, metrics=[Metric(mlflow_key(k), float(v), now, 0) for k, v in metrics.items()],
                              tags=[RunTag(mlflow_key(k), str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items()])
        self.client.set_tag(self.parent_run_id, MLFLOW_RUN_NOTE, description)


def mlflow_key(name: str) -> str:
    """``name`` as a valid MLflow metric or tag key: characters MLflow refuses become ``_``."""
    return re.sub(r"[^/\w.\- ]", "_", name)


class TrialRun:
    """Trial side: the child run of one trial, found by its key or created under the parent.

    A tracking server that stops answering does not stop training: an epoch's metrics that
    cannot be sent wait, and go with the next epoch's batch or with :meth:`flush`."""

    def __init__(self, client: MlflowClient, run):
        self.client, self.run = client, run
        self.run_id = run.info.run_id
        self.pending: list[Metric] = []
        self.warned = False

    @classmethod
    def open(cls, tracking_uri: str, experiment_id: str, parent_run_id: str | None, trial_key: str, run_name: str,
             params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> TrialRun:
        # Give up on one request within seconds rather than MLflow's minutes of retries: the
        # epoch's metrics wait in `pending` and training goes on.
        for name, value in TRIAL_HTTP_SETTINGS.items():
            os.environ.setdefault(name, value)
        client = MlflowClient(tracking_uri)
        return with_retries(lambda: cls._open(client, experiment_id, parent_run_id, trial_key, run_name, params, tags),
                            f"opening the MLflow run of {trial_key}")

    @classmethod
    def _open(cls, client, experiment_id, parent_run_id, trial_key, run_name, params, tags) -> TrialRun:
        run = _find_run(client, experiment_id, trial_key=trial_key)
        if run is None:
            all_tags = {MLFLOW_RUN_NAME: run_name, "trial_key": trial_key, "status": "running", **(tags or {})}
            if parent_run_id:
                all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
            run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
            if params:
                client.log_batch(run.info.run_id, params=_params(params))
        elif run.info.status != RunStatus.to_string(RunStatus.RUNNING) and run.data.tags.get("status") not in COMPLETED:
            client.update_run(run.info.run_id, status="RUNNING")
        return cls(client, run)

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
        self.pending += [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
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

    def save_pending(self, directory: str | Path) -> None:
        """Keep what is held back in a checkpoint, so a trial resumed from it still sends it."""
        rows = [[m.key, m.value, m.timestamp, m.step] for m in self.pending]
        (Path(directory) / PENDING_FILE).write_text(json.dumps(rows))

    def load_pending(self, directory: str | Path) -> None:
        file = Path(directory) / PENDING_FILE
        if file.is_file():
            self.pending = [Metric(*row) for row in json.loads(file.read_text())] + self.pending

    def _send(self) -> None:
        while self.pending:
            batch = self.pending[:MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=batch)
            del self.pending[:len(batch)]
