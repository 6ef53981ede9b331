"""Every YAML under cluster/ validates against Ray's own cluster-config schema.

Launcher configs (`ray up`) are validated as the launcher validates them; the KubeRay RayJob
is turned into the autoscaling config Ray's KubeRay autoscaler derives from it, and that is
validated in turn.
"""

import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted((REPO / "cluster").glob("*.yaml"))
LAUNCHER = [p for p in YAMLS if "provider" in yaml.safe_load(p.read_text())]
KUBERAY = [p for p in YAMLS if p not in LAUNCHER]
ENVIRONMENT = ("MLFLOW_TRACKING_URI", "BNSEARCH_STORAGE")


def ids(paths):
    return [p.name for p in paths]


def commands(config, *keys):
    return "\n".join(c for key in keys for c in config.get(key, []))


def test_cluster_holds_launcher_configs_and_a_rayjob():
    assert {"gpu.yaml", "local.yaml"} <= {p.name for p in LAUNCHER}
    assert KUBERAY


@pytest.mark.parametrize("path", LAUNCHER, ids=ids(LAUNCHER))
def test_launcher_config_matches_rays_schema(path):
    validate_config(prepare_config(yaml.safe_load(path.read_text())))  # provider defaults first, as `ray up` does


@pytest.mark.parametrize("path", LAUNCHER, ids=ids(LAUNCHER))
def test_launcher_config_installs_this_repo_and_exports_where_results_go(path):
    config = yaml.safe_load(path.read_text())
    mounted = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert mounted, "the repository is not synced to the nodes"
    setup = commands(config, "setup_commands")
    assert re.search(r"pip install .*-e .*bnsearch", setup), "setup does not install the synced repo"
    every_node = commands(config, "setup_commands", "head_setup_commands", "worker_start_ray_commands")
    for variable in ENVIRONMENT:
        assert f"export {variable}=" in every_node, f"{variable} is not exported on the nodes"


@pytest.mark.parametrize("path", LAUNCHER, ids=ids(LAUNCHER))
def test_launcher_config_keeps_ray_and_mlflow_off_the_internet(path):
    config = yaml.safe_load(path.read_text())
    head = commands(config, "head_start_ray_commands")
    assert "--dashboard-host=127.0.0.1" in head
    # No security group of our own: the launcher's default opens only SSH to the world.
    for node_type in config.get("available_node_types", {}).values():
        assert "SecurityGroupIds" not in node_type["node_config"]
        assert "NetworkInterfaces" not in node_type["node_config"]


@pytest.mark.parametrize("path", KUBERAY, ids=ids(KUBERAY))
def test_rayjob_matches_rays_schema_and_runs_the_sweep_from_the_image(path):
    job = yaml.safe_load(path.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    ray_cr = {"metadata": {"namespace": "default", **job["metadata"]}, "spec": cluster}
    autoscaling = _derive_autoscaling_config_from_ray_cr(ray_cr)  # validates against the schema
    assert any(t["resources"].get("GPU") for t in autoscaling["available_node_types"].values())

    # The entrypoint runs a sweep file that the image (cluster/Dockerfile) copies from this repo.
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    base_image = re.search(r"^FROM rayproject/ray:([\d.]+)-", dockerfile, re.M)
    copied_to = re.search(r"^COPY .* \. (\S+)$", dockerfile, re.M).group(1)
    script = job["spec"]["entrypoint"].split()[-1]
    assert script.startswith(copied_to + "/") and (REPO / script.removeprefix(copied_to + "/")).is_file()
    assert cluster["rayVersion"] == base_image.group(1)
    assert job["spec"]["shutdownAfterJobFinishes"] is True

    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert {e["name"] for e in container["env"]} >= set(ENVIRONMENT), container["name"]
