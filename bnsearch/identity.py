"""A trial's identity: its sweep, phase and arm, and its place in that arm. One typed value,
built once from a trial's configuration, that names the trial's MLflow run and is read back
from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The configuration keys that identify a trial rather than configure it.
KEYS = ("arm", "phase", "trial_index", "seed")


@dataclass(frozen=True)
class TrialId:
    sweep_id: str
    phase: str
    arm: str
    trial_index: int
    seed: int

    @classmethod
    def of(cls, sweep_id: str, config: Mapping[str, Any]) -> TrialId:
        return cls(sweep_id, config["phase"], config["arm"], int(config["trial_index"]), int(config["seed"]))

    @property
    def key(self) -> str:
        """Its MLflow identity: its arm and its place in that arm (search: trial index,
        replicate: seed), never Tune's trial id. A driver killed after starting a trial but
        before Tune saved it gets, on restore, the same suggestion from the restored searcher
        under a new Tune id; keyed like this, it lands in the run the first attempt opened, as
        does a trial retried from a checkpoint or a seed replicated again."""
        place = f"seed{self.seed}" if self.phase == "replicate" else f"trial{self.trial_index}"
        return f"{self.sweep_id}/{self.phase}/{self.arm}/{place}"

    @property
    def run_name(self) -> str:
        return f"{self.phase}-{self.arm}-{self.trial_index:03d}"

    def tags(self) -> dict[str, str]:
        """What its run is tagged with (and :meth:`from_run` reads back)."""
        return {"sweep_id": self.sweep_id, "phase": self.phase, "arm": self.arm, "seed": str(self.seed)}

    @classmethod
    def from_run(cls, tags: Mapping[str, str], params: Mapping[str, Any]) -> TrialId:
        seed = params.get("seed", tags.get("seed"))
        index = params.get("trial_index")
        return cls(tags.get("sweep_id"), tags.get("phase"), tags.get("arm"),
                   None if index is None else int(index), None if seed in (None, "") else int(seed))
