"""Every cluster launcher config validates against Ray's own schema."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "cluster").glob("*.yaml"))


def test_there_are_cluster_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_launcher_config_matches_rays_schema(path):
    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))  # fill in the provider defaults first, as `ray up` does
    assert config["head_start_ray_commands"] and "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
