"""Driver side: the sweep's experiment and parent run, closing child runs, reading a sweep back."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_all
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from bnsearch.identity import TrialId
from bnsearch.spec import COMPLETED
from bnsearch.tracking.store import as_params, as_stored, find_run, first_run, mlflow_key, parse_param, run_history, with_retries
from bnsearch.tracking.trial import TrialRun

MAX_TAG_LENGTH = 8000  # MLflow's limit on a tag value
SEARCH_PAGE = 50000  # MLflow's most runs per search request
# What MLflow's own run status says for each of ours (spec.COMPLETED, and a crash): only a crash is FAILED.
_RUN_STATUS = {status: "FINISHED" for status in COMPLETED} | {"failed": "FAILED"}


class SweepTracker:
    """Driver side: experiment, parent run, closing child runs, reading a sweep back (or
    following it from what its trials report)."""

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
        self._read: dict[str, tuple] = {}  # run id -> (what the run looked like, its record)
        self._followed: dict[str, dict[str, Any]] | None = None  # trial key -> record, while following reports
        self._stale = False  # followed records to read again from MLflow first
        self._closer: ThreadPoolExecutor | None = None  # closes runs off the caller's thread (close_trial(wait=False))
        self._closing: list[Future] = []

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks, this tracker among them, into the experiment's files: not the
        # records read, and a copy follows no reports (its reader is another process, or a restore).
        return {**self.__dict__, "_read": {}, "_followed": None, "_closer": None, "_closing": []}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"_closer": None, "_closing": [], **state})  # pickled before there were background closes

    def start_sweep(self, sweep_id: str, params: Mapping[str, Any], tags: Mapping[str, str], artifacts: Mapping[str, Any]) -> str:
        """Find or create the parent run of ``sweep_id``; log params, tags and JSON artifacts."""
        run = find_run(self.client, self.experiment_id, sweep_id=sweep_id, role="sweep")
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=sweep_id, tags={"sweep_id": sweep_id, "role": "sweep", **tags})
            self.client.log_batch(run.info.run_id, params=as_params(params))
            for name, content in artifacts.items():
                self.client.log_dict(run.info.run_id, content, name)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.parent_run_id = run.info.run_id
        return self.parent_run_id

    def close_trial(self, trial: TrialId, status: str, run_id: str | None = None, wait: bool = True) -> None:
        """Set a child run's final status (tag and MLflow status); create it if the trial
        died before it could. ``run_id``: the run its trial reported, when it reported one.

        ``wait=False``: a trial that ran to its end (a completed status) and reported its run has
        its run closed by a thread of this tracker, so that Tune's loop, which a free trial slot
        waits on, goes on meanwhile. The records followed say so at once; this tracker's next read
        of MLflow (and :meth:`wait_closed`) waits for it, and raises what it raised. If the driver
        is killed first, :meth:`close_orphans` at the restored run's end gives it its status."""
        close = lambda: with_retries(lambda: self._close_trial(trial, status, run_id), f"closing the run of {trial.key}")  # noqa: E731
        if wait or run_id is None or status not in COMPLETED:  # a failed trial's run may be reopened by its retry: closed first
            close()
        else:
            self._closer = self._closer or ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnsearch-close")
            self._closing.append(self._closer.submit(close))
        if self._followed is None or self._stale or trial.key not in self._followed:
            return
        if status == "failed":  # its process is gone: MLflow holds all it sent, which its reports may not
            run_id = self._followed[trial.key]["run_id"]
            self._followed[trial.key] = with_retries(lambda: self._record_of(self.client.get_run(run_id)), f"reading {trial.key}")
        else:
            self._changeable(trial.key)["tags"]["status"] = status

    def _close_trial(self, trial: TrialId, status: str, run_id: str | None) -> None:
        if run_id is None:  # a trial that reported no epoch, or one replayed after a driver restart
            run = find_run(self.client, self.experiment_id, trial_key=trial.key)
            if run is None:
                run = TrialRun.open(self.tracking_uri, self.experiment_id, self.parent_run_id, trial).run
            elif run.info.status != "RUNNING" and run.data.tags.get("status") == status:
                return  # closed already (a replayed trial): keep its end time
            run_id = run.info.run_id
        self.client.set_tag(run_id, "status", status)
        self.client.set_terminated(run_id, _RUN_STATUS[status])

    def wait_closed(self) -> None:
        """Wait until every run closed with ``wait=False`` is closed; then raise the first error."""
        closing, self._closing = self._closing, []
        wait_for_all(closing)
        for future in closing:
            future.result()

    def close_orphans(self, ended: Mapping[str, str] | None = None) -> int:
        """Close child runs still RUNNING: as failed (their trial never reported an end), or, for
        a trial Tune recorded as ended (``ended``: trial key → status), with that status (a
        driver killed before its background close landed)."""
        self.wait_closed()
        return with_retries(lambda: self._close_orphans(ended or {}), "closing orphaned runs")

    def _close_orphans(self, ended: Mapping[str, str]) -> int:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' and attributes.status = 'RUNNING'",
        )
        for run in runs:
            status = ended.get(run.data.tags.get("trial_key"), "failed")
            self.client.set_tag(run.info.run_id, "status", status)
            self.client.set_terminated(run.info.run_id, _RUN_STATUS[status])
        if runs:
            self.read_again()  # their trials never said how they ended: MLflow has the last word
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
        self.wait_closed()  # read what this tracker wrote
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}'",
                                       max_results=SEARCH_PAGE)

    def follow_reports(self) -> None:
        """From now on :meth:`trial_records` is what MLflow holds now, read once, kept up to date
        from what this driver's trials report to Tune (:meth:`record_report`, :meth:`close_trial`):
        reading it again costs no request. After :meth:`read_again` the next read goes to MLflow,
        and following goes on from there."""
        self._followed, self._stale = self._read_records(), False

    def read_again(self) -> None:
        """The next read of the records followed goes to MLflow first: after a Tune run whose
        trials reported to copies of this tracker (a restored run's callbacks, Ray Client), or
        runs closed without their trials saying how they ended."""
        self._stale = True

    def keeps(self, trial: TrialId, run_id: str, epoch: int) -> bool:
        """Whether the records followed hold ``trial``'s run ``run_id`` up to ``epoch``."""
        record = (self._followed or {}).get(trial.key)
        return record is not None and record["run_id"] == run_id and max(record["history"].get("epoch", {0: 0})) >= epoch

    def record_report(self, trial: TrialId, run_id: str, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """One epoch a trial reported to Tune (and sent to its run ``run_id`` before), kept in
        the records followed as MLflow stores it: params as they read back, ±inf clipped."""
        if self._followed is None or self._stale:
            return  # not following, or the next read takes it from MLflow
        record = self._changeable(trial.key)
        if record is None or record["run_id"] != run_id:
            record = self._followed[trial.key] = {
                "run_id": run_id, "tags": {**trial.tags(), "trial_key": trial.key, "status": "running"},
                "params": {p.key: parse_param(p.value) for p in as_params(params)}, "history": {}}
        step = int(metrics["epoch"])
        for key, value in metrics.items():
            record["history"].setdefault(key, {})[step] = as_stored(float(value))

    def _changeable(self, key: str) -> dict[str, Any] | None:
        """The followed record of ``key``, copied first if it is the one the read cache keeps."""
        record = self._followed.get(key)
        if record is not None and record is self._read.get(record["run_id"], (None, None))[1]:
            record = self._followed[key] = {**record, "tags": dict(record["tags"]),
                                            "history": {k: dict(v) for k, v in record["history"].items()}}
        return record

    def trial_records(self) -> list[dict[str, Any]]:
        """Every child run as plain data: run id, tags, typed params and each metric's
        per-epoch history ``{key: {step: value}}``. While following reports
        (:meth:`follow_reports`): the records followed, no request.

        Otherwise one search for the runs, then one file per run (the history its trial wrote);
        a run this tracker read before and that has not changed since (same status, tags, params
        and latest metrics) is not read again, so a read after another costs one request plus
        one per new or changed run."""
        if self._followed is None:
            return list(self._read_records().values())
        if self._stale:
            self.follow_reports()
        return list(self._followed.values())

    def _read_records(self) -> dict[str, dict[str, Any]]:
        """The records in MLflow, by trial key (see :meth:`trial_records`)."""
        records = {}
        by_key: dict[str, list] = {}
        for run in self.child_runs():
            by_key.setdefault(run.data.tags.get("trial_key", run.info.run_id), []).append(run)
        for run in map(first_run, by_key.values()):  # a spare run of a retried creation is left out
            seen = repr((run.info.status, run.info.end_time, sorted(run.data.tags.items()), sorted(run.data.params.items()),
                         sorted(run.data.metrics.items())))  # repr: NaN equals NaN
            known = self._read.get(run.info.run_id)
            if known is None or known[0] != seen:
                known = self._read[run.info.run_id] = (seen, self._record_of(run))
            records[run.data.tags.get("trial_key", run.info.run_id)] = known[1]
        return records

    def _record_of(self, run) -> dict[str, Any]:
        return {"run_id": run.info.run_id, "tags": dict(run.data.tags),
                "params": {k: parse_param(v) for k, v in run.data.params.items()}, "history": run_history(self.client, run)}

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
