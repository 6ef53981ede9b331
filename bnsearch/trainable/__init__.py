"""The Ray Tune adapter: Tuner, per-arm search and early stopping, reporting, checkpoints,
resources. The only package that imports Ray; Ray's APIs move fast, and this
package absorbs the moves.

Fairness between arms is structural: :class:`ArmSearcher` hands out trials round-robin over
the arms, each arm with its own Optuna study, and :class:`ArmScheduler` runs one ASHA per arm,
so a weak arm's trials are only ever compared (and stopped) against its own. The replicate
phase runs fixed configurations (:class:`FixedConfigs`) through the same trial function.
TensorFlow is imported inside the trial function only, never on the driver.

The modules: :mod:`~bnsearch.trainable.trial` (what runs on a worker),
:mod:`~bnsearch.trainable.searchers` (fairness between arms), :mod:`~bnsearch.trainable.phase`
(the Tuner and its callbacks).
"""

# CloseTrialRuns and ShowProgress by this name too: Tune pickled them so into experiments to restore.
from bnsearch.trainable.phase import CloseTrialRuns, PhaseOutcome, ShowProgress, check_dataset, run_phase, slots, start_ray
from bnsearch.trainable.searchers import ArmScheduler, ArmSearcher, FixedConfigs, ThenReplicate
from bnsearch.trainable.trial import TrialSetup, train_trial, trial_status

__all__ = ["ArmScheduler", "ArmSearcher", "CloseTrialRuns", "FixedConfigs", "PhaseOutcome", "ShowProgress", "ThenReplicate", "TrialSetup", "check_dataset",
           "run_phase", "slots", "start_ray", "train_trial", "trial_status"]
