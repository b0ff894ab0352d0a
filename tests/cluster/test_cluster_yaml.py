"""ray_cluster.yaml is a valid autoscaler config and can hold what the ``cluster`` preset asks for."""

import json
import os

import jsonschema
import pytest
import ray.autoscaler

from cluster.config import load_config
from cluster.runtime.resources import fits, resource_requests, teacher_actor_options, train_scaling


@pytest.fixture(scope="module")
def preset():
    return load_config(["--config", "cluster"])


def _worker_types(config: dict) -> dict[str, dict]:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def test_matches_the_schema_shipped_with_ray(cluster_yaml):
    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(schema_path) as f:
        schema = json.load(f)
    jsonschema.validate(cluster_yaml, schema)


def test_passes_the_autoscalers_own_checks(cluster_yaml):
    # What `ray up` does first: fill in the provider defaults, then validate (offline).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(dict(cluster_yaml)))


def test_node_types(cluster_yaml):
    types = cluster_yaml["available_node_types"]
    assert cluster_yaml["provider"]["type"] == "aws" and cluster_yaml["provider"]["region"]
    assert cluster_yaml["auth"]["ssh_user"] == "ubuntu"
    assert types[cluster_yaml["head_node_type"]]["node_config"]["InstanceType"] == "m5.2xlarge"
    by_instance = {t["node_config"]["InstanceType"]: t for t in _worker_types(cluster_yaml).values()}
    assert by_instance["c5.4xlarge"]["max_workers"] == 8 and by_instance["c5.4xlarge"]["min_workers"] == 0
    assert by_instance["g5.xlarge"]["resources"]["GPU"] == 1 and by_instance["g5.xlarge"]["max_workers"] == 4
    assert by_instance["g5.12xlarge"]["resources"]["GPU"] == 4 and by_instance["g5.12xlarge"]["max_workers"] == 2
    for t in types.values():  # every node reaches S3 through an instance profile, not keys
        assert "Arn" in t["node_config"]["IamInstanceProfile"]
    assert cluster_yaml["idle_timeout_minutes"] > 0
    assert any("pip install" in c and "partdistill" in c for c in cluster_yaml["setup_commands"])
    assert cluster_yaml["head_start_ray_commands"] and cluster_yaml["worker_start_ray_commands"]


def test_every_request_of_the_preset_fits_some_node_type(cluster_yaml, preset):
    nodes = {k: {r: float(n) for r, n in v["resources"].items()} for k, v in _worker_types(cluster_yaml).items()}
    for stage, request in resource_requests(preset).items():
        assert any(fits(request, node) for node in nodes.values()), f"{stage} asks {request}: no node type holds it"
    assert resource_requests(preset)["teacher"]["GPU"] == 1
    assert resource_requests(preset)["train_worker"]["GPU"] == 1


def test_the_whole_pools_fit_at_max_scale(cluster_yaml, preset):
    # All teacher actors at once, and all training workers at once, on the most nodes allowed.
    types = _worker_types(cluster_yaml)
    gpus_at_max = sum(t["resources"].get("GPU", 0) * t["max_workers"] for t in types.values())
    teacher = teacher_actor_options(preset)
    assert teacher.size * teacher.num_gpus <= gpus_at_max
    scaling = train_scaling(preset)
    per_node = max(
        int(min(t["resources"].get(r, 0) // v for r, v in scaling.resources_per_worker.items())) for t in types.values()
    )
    assert per_node >= scaling.num_workers, "training workers should fit on one node (fast NCCL, PACK placement)"
    assert cluster_yaml["max_workers"] >= sum(t["max_workers"] for t in types.values())


def test_preset_loads(preset):
    assert preset.storage.root.startswith("s3://")
    assert preset.cluster.teacher_actors == 4 and preset.cluster.teacher_gpus == 1
    assert preset.cluster.train_workers == 4 and preset.cluster.gpus_per_worker == 1
    assert preset.teacher.name != "simulated" and preset.teacher.model
    assert preset.render.image_size == 800


def test_train_resource_is_offered_by_the_training_nodes_alone(cluster_yaml, preset):
    # Training workers ask for one train_slot each; only gpu_train has them, one per GPU, so
    # training starts training nodes (tests/cluster/test_autoscaling_units.py shows why).
    slot = preset.cluster.train_resource
    types = _worker_types(cluster_yaml)
    assert slot and {n for n, t in types.items() if t["resources"].get(slot, 0) > 0} == {"gpu_train"}
    assert types["gpu_train"]["resources"][slot] == types["gpu_train"]["resources"]["GPU"]
