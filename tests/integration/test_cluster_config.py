"""cluster.yaml (AWS) and cluster-gcp.yaml pass Ray's own config validation, offline, and keep the
settings a user relies on: A100 workers scaling from zero, the Ray 2.60 image, shared cloud
storage, token auth, and no dashboard, client or GCS port open to the internet."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from raymc.resources import DATA_POOL_LABEL

REPO = Path(__file__).resolve().parents[2]
RAY_PORTS = {6379, 8265, 10001}  # GCS, dashboard / job API, Ray Client

CLOUDS = {
    "cluster.yaml": {"provider": "aws", "head": "m6i.2xlarge", "gpu_node": "p4d.24xlarge", "storage": "s3://"},
    "cluster-gcp.yaml": {"provider": "gcp", "head": "n2-standard-8", "gpu_node": "a2-highgpu-8g", "storage": "gs://"},
}


@pytest.fixture(params=sorted(CLOUDS))
def cluster(request) -> tuple[dict, dict]:
    """(the parsed config file, what it must contain)."""
    return yaml.safe_load((REPO / request.param).read_text()), CLOUDS[request.param]


def _instance_type(node_type: dict) -> str:
    node_config = node_type["node_config"]
    return node_config.get("InstanceType") or node_config["machineType"]


def _gpu_node_type(config: dict) -> dict:
    (gpu,) = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    return gpu


def _data_node_type(config: dict) -> dict:
    (data,) = [t for t in config["available_node_types"].values() if t.get("labels") == {DATA_POOL_LABEL: "data"}]
    return data


def _ray_start_commands(config: dict) -> list[str]:
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    return [c for c in commands if "ray start" in c]


def test_config_passes_rays_own_validation(cluster):
    """What `ray up` does before it calls the cloud: fill in the provider defaults, then check the
    result against ray/autoscaler/ray-schema.json and the node-type rules."""
    config, _ = cluster
    validate_config(prepare_config(copy.deepcopy(config)))


def test_a_config_with_a_typo_is_refused(cluster):
    """The validation above has teeth: an unknown key fails it."""
    config, _ = cluster
    config = copy.deepcopy(config)
    config["available_node_types"]["head"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(config))


def test_cpu_head_and_eight_a100_workers_scaling_from_zero(cluster):
    config, expected = cluster
    assert config["provider"]["type"] == expected["provider"] and config["provider"]["region"]
    head = config["available_node_types"][config["head_node_type"]]
    assert _instance_type(head) == expected["head"] and head["resources"].get("GPU", 0) == 0
    gpu = _gpu_node_type(config)
    assert _instance_type(gpu) == expected["gpu_node"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["resources"]["GPU"] == 8


def test_a_cpu_only_data_pool_scales_from_zero_with_raymcs_label(cluster):
    """The node type that raymc's Ray Data work goes to when it is up (raymc.resources.data_pool)."""
    config, _ = cluster
    data = _data_node_type(config)
    assert data["min_workers"] == 0 and data["max_workers"] >= 1
    assert data["resources"].get("GPU", 0) == 0 and data["resources"]["CPU"] >= 32
    assert config["max_workers"] >= data["max_workers"] + _gpu_node_type(config)["max_workers"]  # both pools fit


def test_image_is_the_ray_image_of_the_installed_ray(cluster):
    config, _ = cluster
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-{python}-gpu"
    assert "ray-ml" not in yaml.safe_dump(config)  # frozen at Ray 2.30


def test_every_node_installs_raymc_from_the_mounted_repo(cluster):
    config, _ = cluster
    (repo_mount,) = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert any(re.search(rf"pip install .*{re.escape(repo_mount)}\b", c) for c in config["setup_commands"])
    assert "**/.git" in config["rsync_exclude"] and ".gitignore" in config["rsync_filter"]


def test_runs_go_to_shared_cloud_storage(cluster):
    config, expected = cluster
    options = config["docker"]["run_options"]
    env = dict(o.removeprefix("--env=").split("=", 1) for o in options if o.startswith("--env="))
    assert env["RAYMC_STORAGE"].startswith(expected["storage"])


def test_token_auth_on_every_node(cluster):
    config, _ = cluster
    starts = _ray_start_commands(config)
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert "--env=RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def test_dashboard_listens_on_the_heads_loopback_only(cluster):
    config, _ = cluster
    (head_start,) = [c for c in _ray_start_commands(config) if "--head" in c]
    assert "--dashboard-host=127.0.0.1" in head_start.split()
    assert "0.0.0.0" not in yaml.safe_dump(config)


def _ingress_rules(node) -> list[dict]:
    """Every AWS security group rule (a dict with IpProtocol) anywhere in the config."""
    if isinstance(node, dict):
        own = [node] if "IpProtocol" in node else []
        return own + [rule for value in node.values() for rule in _ingress_rules(value)]
    if isinstance(node, list):
        return [rule for value in node for rule in _ingress_rules(value)]
    return []


def _rules_opening_ray_ports_to_the_internet(config: dict) -> list[dict]:
    found = []
    for rule in _ingress_rules(config):
        sources = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
        sources |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        all_ports = rule.get("FromPort", -1) == -1
        ports = RAY_PORTS if all_ports else set(range(rule["FromPort"], rule.get("ToPort", rule["FromPort"]) + 1))
        if sources & {"0.0.0.0/0", "::/0"} and ports & RAY_PORTS:
            found.append(rule)
    return found


def test_no_ray_port_is_open_to_the_internet(cluster):
    config, _ = cluster
    assert _rules_opening_ray_ports_to_the_internet(config) == []
    # The check finds such a rule wherever it is written:
    opened = copy.deepcopy(config)
    opened["provider"]["security_group"] = {
        "GroupName": "raymc",
        "IpPermissions": [
            {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        ],
    }
    assert len(_rules_opening_ray_ports_to_the_internet(opened)) == 1
