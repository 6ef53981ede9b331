"""MLflow: one experiment per sweep, one parent run per invocation, one child run per trial.
The only MLflow import (this package): the store (:mod:`.store`), the driver's side
(:mod:`.sweep`) and a trial's (:mod:`.trial`).

Every trial run carries a deterministic key (sweep id / phase / trial id) and is looked up by
it before one is created, so a trial retried from a checkpoint, or resumed after the driver
restarts, logs into the run it already has instead of a duplicate. The driver creates the store,
experiment and parent run before any trial starts (concurrent first use of a fresh SQLite store
races its schema migration), and it closes every child run with its final status. A trial writes
its whole metric history as one file when its process is done with it, so a sweep is read back
with one request per trial, however many metrics each logs.
"""

from bnsearch.tracking.store import (
    DEFAULT_STORAGE, HISTORY_FILE, as_params, check_reachable, default_tracking_uri, local_artifact_root, mlflow_key,
    parse_param, resolve_tracking_uri,
)
from bnsearch.tracking.sweep import SweepTracker
from bnsearch.tracking.trial import TrialRun

__all__ = ["DEFAULT_STORAGE", "HISTORY_FILE", "SweepTracker", "TrialRun", "as_params", "check_reachable", "default_tracking_uri",
           "local_artifact_root", "mlflow_key", "parse_param", "resolve_tracking_uri"]
