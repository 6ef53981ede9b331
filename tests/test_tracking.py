import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.tracking import MlflowClient

from bnsearch import results, tracking
from bnsearch.identity import TrialId


def trial(arm: str, index: int = 0, sweep_id: str = "sweep-1") -> TrialId:
    return TrialId(sweep_id, "search", arm, index, index)


def tracker(tmp_path):
    t = tracking.SweepTracker(tracking.default_tracking_uri(tmp_path), "exp", artifact_root=tmp_path / "artifacts")
    t.start_sweep("sweep-1", params={"model": "mlp"}, tags={}, artifacts={"spec.json": {"a": 1}})
    return t


def test_a_trial_key_maps_to_exactly_one_run(tmp_path):
    t = tracker(tmp_path)
    open_ = lambda: tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("abc"), params={"lr": 0.1})  # noqa: E731
    first = open_()
    first.log_epoch(1, {"val_accuracy": 0.5})
    first.flush()
    t.close_trial(trial("abc"), "failed")  # its node died
    again = open_()  # Tune retries it
    assert again.run_id == first.run_id and len(t.child_runs()) == 1 and not again.completed
    assert MlflowClient(t.tracking_uri).get_run(again.run_id).info.status == "RUNNING"
    t.close_trial(trial("abc"), "stopped_early")
    resumed = open_()  # a resumed sweep meets a trial that already ended: replayed, not reopened
    assert resumed.run_id == first.run_id and resumed.completed and len(t.child_runs()) == 1
    assert MlflowClient(t.tracking_uri).get_run(resumed.run_id).info.status == "FINISHED"


def resent_after_timeout(monkeypatch, conflicting: dict | None = None):
    """log_batch as a client sees it when it resent a request whose first try the server was
    still writing: the params land (``conflicting`` instead, where given) and the resend fails
    on the duplicate."""
    log_batch = MlflowClient.log_batch

    def first_try_lands(self, run_id, metrics=(), params=(), tags=()):
        log_batch(self, run_id, metrics=metrics, params=tracking.store.as_params(conflicting) if conflicting else params, tags=tags)
        raise MlflowException("UNIQUE constraint failed: params.key, params.run_uuid", error_code=BAD_REQUEST)
    monkeypatch.setattr(MlflowClient, "log_batch", first_try_lands)


def test_params_that_a_resent_request_already_logged_open_the_run(tmp_path, monkeypatch):
    t = tracker(tmp_path)
    resent_after_timeout(monkeypatch)
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("a"), params={"lr": 0.1, "arm": "a"})
    assert MlflowClient(t.tracking_uri).get_run(run.run_id).data.params == {"lr": "0.1", "arm": "a"}


def test_params_that_differ_from_what_the_run_holds_still_fail(tmp_path, monkeypatch):
    t = tracker(tmp_path)
    resent_after_timeout(monkeypatch, conflicting={"lr": 0.2})
    with pytest.raises(RuntimeError, match="UNIQUE constraint"):
        tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("a"), params={"lr": 0.1})


def test_a_repeated_metric_write_is_stored_once(tmp_path):
    t = tracker(tmp_path)
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("k"))
    run.log_epoch(1, {"loss": 1.0})
    run.flush()
    original = run.client.get_metric_history(run.run_id, "loss")[0]
    run.client.log_batch(run.run_id, metrics=[original])  # what a client retry sends
    assert len(run.client.get_metric_history(run.run_id, "loss")) == 1


def test_statuses_parent_tag_orphans_and_parent_reuse(tmp_path):
    t = tracker(tmp_path)
    for arm in ("a", "b", "c"):
        tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial(arm))
    t.close_trial(trial("a"), "diverged")
    t.close_trial(trial("b"), "failed")
    t.close_trial(trial("never-started"), "failed")  # died before opening its run
    assert t.close_orphans() == 1  # c never reported an end
    runs = {r.data.tags["arm"]: r for r in t.child_runs()}
    assert {k: (r.info.status, r.data.tags["status"]) for k, r in runs.items()} == {
        "a": ("FINISHED", "diverged"), "b": ("FAILED", "failed"), "c": ("FAILED", "failed"), "never-started": ("FAILED", "failed"),
    }
    assert all(r.data.tags["mlflow.parentRunId"] == t.parent_run_id for r in runs.values())
    assert t.start_sweep("sweep-1", {}, {}, {}) == t.parent_run_id  # same sweep id, same parent
    assert [a.path for a in MlflowClient(t.tracking_uri).list_artifacts(t.parent_run_id)] == ["spec.json"]


def test_a_completed_trial_closes_in_the_background_and_the_next_read_waits_for_it(tmp_path, monkeypatch):
    import threading

    t = tracker(tmp_path)
    runs = {arm: tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial(arm)) for arm in ("a", "b")}
    t.follow_reports()
    release, close = threading.Event(), t._close_trial
    monkeypatch.setattr(t, "_close_trial", lambda *args: release.wait(30) and close(*args))
    t.close_trial(trial("a"), "finished", runs["a"].run_id, wait=False)  # returns with its writes pending
    assert MlflowClient(t.tracking_uri).get_run(runs["a"].run_id).info.status == "RUNNING"
    assert {r["tags"]["arm"]: r["tags"]["status"] for r in t.trial_records()} == {"a": "finished", "b": "running"}
    release.set()
    assert {r.data.tags["arm"]: r.info.status for r in t.child_runs()} == {"a": "FINISHED", "b": "RUNNING"}

    release.clear()  # a failed trial's run is closed at once, whatever is asked: its retry may reopen it
    threading.Timer(0.5, release.set).start()
    t.close_trial(trial("b"), "failed", runs["b"].run_id, wait=False)
    assert MlflowClient(t.tracking_uri).get_run(runs["b"].run_id).info.status == "FAILED"

    def unreachable(*args):
        raise ConnectionError("the store went away")
    monkeypatch.setattr(tracking.store, "RETRY_TIMEOUT_S", 0.0)
    monkeypatch.setattr(t, "_close_trial", unreachable)
    t.close_trial(trial("a"), "finished", runs["a"].run_id, wait=False)
    with pytest.raises(RuntimeError, match="closing the run of"):  # a background close that failed is not lost
        t.wait_closed()
    t.wait_closed()  # raised once


def test_orphans_that_tune_recorded_as_ended_keep_their_status(tmp_path):
    """A driver killed before its background close landed: on the restored run's end, the run of a
    trial Tune recorded as ended gets that status; one that never reported an end has failed."""
    t = tracker(tmp_path)
    for arm in ("ended", "lost"):
        tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial(arm))
    assert t.close_orphans({trial("ended").key: "stopped_early"}) == 2
    assert {r.data.tags["arm"]: (r.info.status, r.data.tags["status"]) for r in t.child_runs()} == {
        "ended": ("FINISHED", "stopped_early"), "lost": ("FAILED", "failed")}


def test_params_come_back_typed():
    params = dict((p.key, p.value) for p in tracking.as_params({"lr": 0.001, "sizes": [32, 32], "bn": True, "arm": "before", "n": 3}))
    assert params == {"lr": "0.001", "sizes": "[32, 32]", "bn": "true", "arm": "before", "n": "3"}  # readable in the UI
    assert {k: tracking.parse_param(v) for k, v in params.items()} == {"lr": 0.001, "sizes": [32, 32], "bn": True, "arm": "before", "n": 3}


def test_reading_a_sweep_back(tmp_path):
    t = tracker(tmp_path)
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("none"), params={"lr": 0.1},
                                 tags={"dry_run": "true"})
    run.log_epoch(1, {"val_accuracy": 0.5, "epoch": 1})
    run.log_epoch(2, {"val_accuracy": 0.7, "epoch": 2})
    run.flush()  # sent, but no history file: read back one request per metric
    t.start_sweep("sweep-2", {}, {}, {})  # a later sweep in the same experiment
    reader = tracking.SweepTracker(t.tracking_uri, "exp", create=False)
    assert reader.open_sweep() == "sweep-2" and reader.open_sweep("sweep-1") == "sweep-1"
    [record] = reader.trial_records()
    assert record["params"] == {"lr": 0.1} and record["tags"]["arm"] == "none" and record["tags"]["dry_run"] == "true"
    assert record["history"]["val_accuracy"] == {1: 0.5, 2: 0.7}
    assert reader.read_json("spec.json") == {"a": 1} and reader.download("nothing.txt", tmp_path) is None
    with pytest.raises(LookupError):
        reader.open_sweep("sweep-3")
    with pytest.raises(LookupError):
        tracking.SweepTracker(t.tracking_uri, "no-such-experiment", create=False)


def test_the_parent_run_carries_the_summary_under_valid_keys(tmp_path):
    t = tracker(tmp_path)
    arm = "bn_placement=before,batch_size=8"  # '=' and ',' are not allowed in MLflow keys
    t.log_summary({f"arm/{arm}/mean": 97.1}, {"verdict/before vs none": "supported: ..."}, "**Verdicts**")
    run = MlflowClient(t.tracking_uri).get_run(t.parent_run_id)
    assert run.data.metrics[tracking.mlflow_key(f"arm/{arm}/mean")] == 97.1
    assert tracking.mlflow_key(arm) == "bn_placement_before_batch_size_8"
    assert run.data.tags["verdict/before vs none"] == "supported: ..." and run.data.tags["mlflow.note.content"] == "**Verdicts**"


class CountingClient:
    """An MlflowClient that counts the calls made through it."""

    def __init__(self, client):
        self.client, self.calls = client, {}

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)
        return counted

    def total(self) -> int:
        return sum(self.calls.values())


def same(a, b) -> bool:
    """Equal, NaN included."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def log_trials(t, count: int, metrics: int, epochs: int, finish: bool = True) -> list:
    runs = []
    for i in range(count):
        run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("a", i), params={"lr": 0.1 * i})
        for epoch in range(1, epochs + 1):
            run.log_epoch(epoch, {f"m{k}": i + k + epoch / 10 for k in range(metrics)} | {"nan": float("nan")})
        run.finish() if finish else run.flush()
        runs.append(run)
    return runs


def test_a_sweep_reads_back_in_one_request_per_trial_and_a_read_again_costs_one(tmp_path, monkeypatch):
    files = []
    read_artifact = tracking.store.read_artifact
    monkeypatch.setattr(tracking.store, "read_artifact", lambda client, uri, name: files.append(name) or read_artifact(client, uri, name))
    t = tracker(tmp_path)
    log_trials(t, count=4, metrics=12, epochs=3)
    reader = tracking.SweepTracker(t.tracking_uri, "exp", create=False)
    reader.open_sweep("sweep-1")
    reader.client = counting = CountingClient(reader.client)
    records = reader.trial_records()
    assert counting.calls == {"search_runs": 1} and files == [tracking.HISTORY_FILE] * 4  # none per metric
    by_name = {r["tags"]["mlflow.runName"]: r for r in records}  # search-a-002: the third
    assert by_name["search-a-002"]["history"]["m5"] == {1: 2 + 5.1, 2: 2 + 5.2, 3: 2 + 5.3}
    assert set(by_name["search-a-002"]["history"]) == {*(f"m{k}" for k in range(12)), "nan"}
    # Read as MLflow stores them, one request per metric: the same records.
    slow = [{**r, "history": tracking.store.read_history(reader.client.client, reader.client.get_run(r["run_id"]))} for r in records]
    assert same(slow, records)
    counting.calls.clear()
    assert reader.trial_records() == records and counting.calls == {"search_runs": 1} and len(files) == 4  # nothing changed: nothing read


def test_a_run_of_one_epoch_writes_no_history_file_and_reads_back_with_no_request(tmp_path, monkeypatch):
    files = []
    read_artifact = tracking.store.read_artifact
    monkeypatch.setattr(tracking.store, "read_artifact", lambda client, uri, name: files.append(name) or read_artifact(client, uri, name))
    t = tracker(tmp_path)
    runs = log_trials(t, count=3, metrics=5, epochs=1)
    assert not any(MlflowClient(t.tracking_uri).list_artifacts(run.run_id) for run in runs)  # its latest metrics hold it all
    reader = tracking.SweepTracker(t.tracking_uri, "exp", create=False)
    reader.open_sweep("sweep-1")
    reader.client = counting = CountingClient(reader.client)
    records = reader.trial_records()
    assert counting.calls == {"search_runs": 1} and files == []
    slow = [{**r, "history": tracking.store.read_history(reader.client.client, reader.client.get_run(r["run_id"]))} for r in records]
    assert same(slow, records)
    assert {r["tags"]["mlflow.runName"]: r for r in records}["search-a-002"]["history"]["m1"] == {1: 2 + 1 + 0.1}
    again = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("a", 0))  # resumed: epoch 2 follows
    again.log_epoch(2, {f"m{k}": 9.0 for k in range(5)} | {"nan": 1.0})
    again.finish()
    counting = CountingClient(MlflowClient(t.tracking_uri))
    history = tracking.store.run_history(counting, counting.get_run(again.run_id))
    assert history["m3"] == {1: 3.1, 2: 9.0} and files[-1] == tracking.HISTORY_FILE  # two epochs: the file, whole
    assert "get_metric_history" not in counting.calls


def test_a_trials_files_reach_its_run_whole_with_no_request_to_the_store(tmp_path):
    t = tracker(tmp_path)
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("a"))
    run.client = counting = CountingClient(run.client)
    run.log_files({"test_correct.npz": b"first", "notes.txt": b"x"})
    run.log_files({"test_correct.npz": b"second"})  # written again: replaced
    assert counting.calls == {}  # MLflow's own upload looks the run up first
    client = MlflowClient(t.tracking_uri)
    assert sorted(a.path for a in client.list_artifacts(run.run_id)) == ["notes.txt", "test_correct.npz"]  # nothing partial left
    assert Path(client.download_artifacts(run.run_id, "test_correct.npz", str(tmp_path))).read_bytes() == b"second"


def test_a_driver_following_its_trials_reports_has_the_table_mlflow_gives_without_reading_it(tmp_path):
    """What the trials report is what they logged: the driver keeps its records from the reports
    (a run from before it started read once), and they give the table MLflow gives a new reader."""
    t = tracker(tmp_path)
    [earlier] = log_trials(t, count=1, metrics=2, epochs=2, finish=False)  # a trial from before this driver
    t.follow_reports()
    t.client = counting = CountingClient(t.client)

    def trains(run, key: TrialId, params: dict, epochs: range) -> None:
        for epoch in epochs:
            metrics = {"epoch": float(epoch), "m0": epoch / 3, "m1": -epoch, "nan": float("nan"), "inf": float("inf")}
            if epoch == epochs[-1]:
                metrics["test_accuracy"] = 0.75  # logged only at the end
            run.log_epoch(epoch, metrics)
            t.record_report(key, run.run_id, params, metrics)
        run.finish()

    trains(earlier, trial("a", 0), {"lr": 0.0}, range(3, 4))  # resumed: one more epoch
    new = trial("b", 1)
    params = {"arm": "b", "phase": "search", "trial_index": 1, "seed": 1, "lr": 0.3, "widths": [4, 8], "bn": "before"}
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, new, params=params)
    trains(run, new, params, range(1, 4))
    t.close_trial(new, "finished", run.run_id)
    t.close_trial(trial("a", 0), "stopped_early", earlier.run_id)
    followed = t.trial_records()
    assert not {"search_runs", "get_metric_history", "download_artifacts"} & set(counting.calls)
    crashed = trial("c", 2)  # sent its second epoch, then died before reporting it
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, crashed, params={**params, "arm": "c"})
    trains(run, crashed, {**params, "arm": "c"}, range(1, 2))
    run.log_epoch(2, {"epoch": 2.0, "m0": 0.5})
    run.flush()
    t.close_trial(crashed, "failed", run.run_id)  # what reached MLflow is what counts
    followed = t.trial_records()

    reader = tracking.SweepTracker(t.tracking_uri, "exp", create=False)
    reader.open_sweep("sweep-1")
    from_mlflow = results.from_records(reader.trial_records())
    pd.testing.assert_frame_equal(results.from_records(followed), from_mlflow)
    assert sorted(from_mlflow.drop_duplicates("run_id")["status"]) == ["failed", "finished", "stopped_early"] and len(from_mlflow) == 8
    assert t.__getstate__()["_followed"] is None  # Tune's pickled copy follows nothing
    t.read_again()  # e.g. a restored Tune run, whose trials reported elsewhere
    searched = counting.calls.get("search_runs", 0)
    assert same(t.trial_records(), reader.trial_records()) and counting.calls["search_runs"] == searched + 1


def test_a_stale_or_missing_history_file_falls_back_to_the_store(tmp_path):
    t = tracker(tmp_path)
    stale, unwritten = log_trials(t, count=2, metrics=2, epochs=2, finish=False)
    stale.finish()
    stale.log_epoch(3, {"m0": 9.0, "m1": 9.5, "nan": 0.0})  # a retry that died before writing the file again
    stale.flush()
    records = {r["run_id"]: r["history"] for r in t.trial_records()}
    assert records[stale.run_id]["m0"] == {1: 0.1, 2: 0.2, 3: 9.0}
    assert records[unwritten.run_id]["m1"] == {1: 2.1, 2: 2.2}
    # A resumed trial starts from what its run holds, so the file it writes at the end is whole.
    again = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("a", 0))
    again.log_epoch(4, {"m0": 10.0, "m1": 10.5, "nan": 1.0})
    again.finish()
    reader = tracking.SweepTracker(t.tracking_uri, "exp", create=False)
    reader.open_sweep("sweep-1")
    reader.client = counting = CountingClient(reader.client)
    history = {r["run_id"]: r["history"] for r in reader.trial_records()}[stale.run_id]
    assert history["m0"] == {1: 0.1, 2: 0.2, 3: 9.0, 4: 10.0} and "get_metric_history" in counting.calls  # the unwritten one
    assert counting.calls["get_metric_history"] == 3  # only the run without a file, one per metric


def test_training_does_not_wait_for_the_store_and_nothing_queued_is_lost(tmp_path):
    """A slow store (0.3 s per request): ten epochs queue in well under one request's time; a
    checkpoint taken meanwhile holds what is not in yet; finish() waits until all is in."""
    t = tracker(tmp_path)
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("slow"))
    log_batch = run.client.log_batch
    run.client.log_batch = lambda *a, **k: time.sleep(0.3) or log_batch(*a, **k)
    start = time.perf_counter()
    for epoch in range(1, 11):
        run.log_epoch(epoch, {"loss": 1 / epoch, "epoch": epoch})
    assert time.perf_counter() - start < 0.3
    run.save_pending(tmp_path)
    assert len(json.loads((tmp_path / "pending_metrics.json").read_text())) >= 2  # not sent yet: kept with the checkpoint
    run.finish()
    assert not run.pending and run._sender is None  # the sender ended with the run
    steps = [m.step for m in MlflowClient(t.tracking_uri).get_metric_history(run.run_id, "loss")]
    assert sorted(steps) == list(range(1, 11))


def test_fast_epochs_share_a_request_and_still_reach_the_store_soon(tmp_path, monkeypatch):
    """Epochs 50 ms apart: the first goes at once, the rest wait for the sender's pause and go in
    one request when finish() cuts the pause short; an epoch nobody flushes is in the store one
    pause later."""
    monkeypatch.setattr(tracking.trial, "SEND_EVERY_S", 5.0)
    t = tracker(tmp_path)
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("fast"))
    requests = []
    log_batch = run.client.log_batch
    run.client.log_batch = lambda run_id, metrics=(), **k: requests.append(len(metrics)) or log_batch(run_id, metrics=metrics, **k)
    for epoch in range(1, 11):
        run.log_epoch(epoch, {"loss": 1 / epoch, "epoch": epoch})
        time.sleep(0.05)
    start = time.perf_counter()
    run.finish()
    assert time.perf_counter() - start < 2.5  # not the 5 s pause
    assert len(requests) == 2 and sum(requests) == 20  # the first at once (two metrics an epoch), the rest at finish()
    assert sorted(m.step for m in run.client.get_metric_history(run.run_id, "loss")) == list(range(1, 11))

    monkeypatch.setattr(tracking.trial, "SEND_EVERY_S", 0.5)
    later = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("unflushed"))
    later.log_epoch(1, {"loss": 1.0})
    time.sleep(0.1)
    later.log_epoch(2, {"loss": 0.5})  # during the pause after epoch 1's request
    deadline = time.monotonic() + 10
    while len(later.client.get_metric_history(later.run_id, "loss")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(later.client.get_metric_history(later.run_id, "loss")) == 2
    later.finish()


def test_a_request_the_store_rejects_reaches_the_trial(tmp_path):
    t = tracker(tmp_path)
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("bad"))
    run.log_epoch(1, {"x" * 300: 1.0})  # longer than MLflow allows a metric key
    with pytest.raises(MlflowException):
        run.flush(timeout_s=30)


def test_a_retried_open_still_logs_the_params_its_first_try_did_not(tmp_path, monkeypatch):
    """Under load the store can take a run's creation and then fail the request with its
    params: the retry finds the run, and must log them there, not leave a run without them."""
    import requests

    failed = []

    class FlakyClient(MlflowClient):
        def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
            if params and not failed:
                failed.append(run_id)
                raise requests.ConnectionError("the store is busy")
            return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(tracking.trial, "MlflowClient", FlakyClient)
    t = tracker(tmp_path)
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("busy"), params={"lr": 0.1})
    assert failed == [run.run_id] and len(t.child_runs()) == 1
    assert MlflowClient(t.tracking_uri).get_run(run.run_id).data.params == {"lr": "0.1"}


def test_a_spare_run_of_a_retried_creation_is_never_the_one_used(tmp_path):
    """A server that timed out a creation and then carried out it and its retry leaves two
    runs with one key: the trial, the driver and the reader all take the same one."""
    t = tracker(tmp_path)
    spare = MlflowClient(t.tracking_uri).create_run(t.experiment_id, tags={"trial_key": trial("twice").key,
                                                                           "mlflow.parentRunId": t.parent_run_id})
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("twice"), params={"lr": 0.1})
    assert run.run_id == spare.info.run_id  # the earlier of two empty runs
    MlflowClient(t.tracking_uri).create_run(t.experiment_id, tags={"trial_key": trial("twice").key, "mlflow.parentRunId": t.parent_run_id})
    run.log_epoch(1, {"loss": 1.0})
    run.finish()
    t.close_trial(trial("twice"), "finished")
    [record] = t.trial_records()  # the later spare is left out
    assert record["run_id"] == run.run_id and record["tags"]["status"] == "finished" and record["params"] == {"lr": 0.1}


def test_an_infinite_value_reads_back_as_the_store_keeps_it_from_the_file_too(tmp_path):
    t = tracker(tmp_path)
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("diverged"))
    run.log_epoch(1, {"loss": float("inf"), "epoch": 1})
    run.finish()
    [record] = t.trial_records()
    assert same(record["history"], tracking.store.read_history(t.client, t.client.get_run(run.run_id)))
    assert record["history"]["loss"] == {1: sys.float_info.max}  # from the file: it agreed with the store


def test_an_unexpected_error_in_the_sender_reaches_the_trial_at_once(tmp_path):
    t = tracker(tmp_path)
    run = tracking.TrialRun.open(t.tracking_uri, t.experiment_id, t.parent_run_id, trial("odd"))
    run.client.log_batch = lambda *a, **k: (_ for _ in ()).throw(ValueError("not a transport error"))
    run.log_epoch(1, {"loss": 1.0})
    start = time.perf_counter()
    with pytest.raises(ValueError):
        run.flush(timeout_s=60)
    assert time.perf_counter() - start < 10 and run._sender is None
    with pytest.raises(ValueError):
        run.log_epoch(2, {"loss": 0.5})


def test_what_a_trial_process_still_holds_is_sent_when_tune_ends_the_process(tmp_path):
    """Tune ends a stopped trial's process (an actor's graceful exit) without waiting for the
    trial's thread: the epoch still on its way to the store, and the history file, get there."""
    import ray

    t = tracker(tmp_path)

    @ray.remote(num_cpus=0)
    class TrialProcess:
        def log_slowly(self, uri, experiment_id, parent_run_id):
            run = tracking.TrialRun.open(uri, experiment_id, parent_run_id, trial("stopped"))
            send = run.client.log_batch
            run.client.log_batch = lambda *args, **kwargs: time.sleep(0.5) or send(*args, **kwargs)  # a slow store
            run.log_epoch(1, {"loss": 0.5})
            return run.run_id

    here = str(Path(__file__).parent)  # the actor class is this module's
    ray.init("local", num_cpus=1, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": here}})
    try:
        process = TrialProcess.remote()
        run_id = ray.get(process.log_slowly.remote(t.tracking_uri, t.experiment_id, t.parent_run_id))
        with pytest.raises(ray.exceptions.RayActorError):  # raised once the process has ended
            ray.get(process.__ray_terminate__.remote())  # as Tune removes an actor it does not keep
    finally:
        ray.shutdown()
    run = MlflowClient(t.tracking_uri).get_run(run_id)
    assert run.data.metrics == {"loss": 0.5}
    [record] = t.trial_records()
    assert record["history"] == {"loss": {1: 0.5}}
