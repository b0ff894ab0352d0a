"""The autoscaling decisions without a cluster, and ``hold_capacity`` against a real local Ray.

The fake cluster's node types come from ``ray_cluster.yaml`` (``fake_node_types``); these
tests check that the scaled-down types keep what matters: the same names, the same
resource kinds, and the same answer to "which node types can hold this request" for every
request the ``cluster`` preset and the autoscaling tests make.
"""

import json

import pytest

from cluster.config import load_config
from cluster.runtime.autoscaling import (
    FAKE_HEAD_TYPE,
    fake_node_types,
    held_bundles,
    hold_capacity,
    node_type_of,
    nodes_needed,
    scale_resources,
    training_bundles,
    worker_node_types,
)
from cluster.runtime.resources import fits, resource_requests

# What tests/cluster/test_autoscaling_cluster.py runs: a GPU teacher, training workers pinned
# to the training nodes by train_slot, a GPU re-scoring actor.
FAKE_RUN_ARGS = [
    "--config", "smoke", "cluster.backend=ray", "cluster.render_cpus=1", "cluster.teacher_gpus=1",
    "cluster.train_workers=2", "cluster.train_resource=train_slot", "cluster.rescore_gpus=1",
]  # fmt: skip


def _fitting(request: dict[str, float], types: dict[str, dict]) -> set[str]:
    return {name for name, t in types.items() if name != FAKE_HEAD_TYPE and fits(request, t["resources"])}


def test_fake_node_types_mirror_ray_cluster_yaml(cluster_yaml):
    real = worker_node_types(cluster_yaml)
    fake = fake_node_types(cluster_yaml)
    assert set(fake) == set(real) | {FAKE_HEAD_TYPE}
    assert fake[FAKE_HEAD_TYPE]["resources"] == {"CPU": 0.0}  # the head runs no tasks, as in the yaml
    for name, t in real.items():
        f = fake[name]
        assert set(f["resources"]) == set(t["resources"]), name
        assert all(0 < f["resources"][k] <= v for k, v in t["resources"].items() if v > 0), name
        assert 1 <= f["max_workers"] <= t["max_workers"] and f["min_workers"] == min(t["min_workers"], f["max_workers"])
    # Every request lands on the same node types in the fake cluster as in the real one.
    for cfg in (load_config(["--config", "cluster"]), load_config(FAKE_RUN_ARGS)):
        for stage, request in resource_requests(cfg).items():
            assert _fitting(request, fake) == _fitting(request, real), (stage, request)
    assert _fitting({"CPU": 1, "GPU": 1}, real) == {"gpu_teacher", "gpu_train"}
    assert _fitting(resource_requests(load_config(FAKE_RUN_ARGS))["train_worker"], real) == {"gpu_train"}


def test_scale_resources():
    assert scale_resources({"CPU": 48, "GPU": 4, "train_slot": 4}, 2, 2) == {"CPU": 2.0, "GPU": 2.0, "train_slot": 2.0}
    assert scale_resources({"CPU": 0}, 2, 2) == {"CPU": 0.0}
    assert scale_resources({"CPU": 4, "GPU": 0.5}, 2, 2) == {"CPU": 2.0, "GPU": 1.0}
    with pytest.raises(ValueError):
        fake_node_types({"head_node_type": "h", "available_node_types": {"h": {}}}, max_cpus=0)


def test_node_type_of(cluster_yaml):
    types = fake_node_types(cluster_yaml)
    live = {"CPU": 2.0, "GPU": 2.0, "train_slot": 2.0, "memory": 1e9, "object_store_memory": 1e8, "node:127.0.0.1": 1}
    assert node_type_of(live, types) == "gpu_train"
    assert node_type_of({"node:__internal_head__": 1.0, "memory": 1.0}, types) == FAKE_HEAD_TYPE
    assert node_type_of({"CPU": 7.0}, types) is None


def test_nodes_needed():
    node = {"CPU": 2.0, "GPU": 2.0, "train_slot": 2.0}
    assert nodes_needed([{"CPU": 1, "train_slot": 1}] * 2, node) == 1
    assert nodes_needed([{"CPU": 1, "train_slot": 1}] * 3, node) == 2
    assert nodes_needed([], node) == 0
    assert nodes_needed([{"CPU": 1, "GPU": 1}, {"CPU": 2}], {"CPU": 4, "GPU": 1}) == 1
    with pytest.raises(ValueError, match="does not fit"):
        nodes_needed([{"GPU": 1}], {"CPU": 16})


def test_training_and_held_bundles(cluster_yaml):
    assert training_bundles(load_config(FAKE_RUN_ARGS)) == [{"CPU": 1.0, "train_slot": 1.0}] * 2
    preset = load_config(["--config", "cluster"])
    assert training_bundles(preset) == [{"CPU": 1.0, "GPU": 1.0, "train_slot": 1.0}] * 4
    # The hold keeps the slots only: the re-scoring actors' GPUs are theirs to ask for.
    assert held_bundles(preset) == [{"train_slot": 1.0}] * 4
    assert _ray_picks(cluster_yaml, held_bundles(preset)) == {"gpu_train": 1}
    # During a re-scoring pass, with the training node up: the hold and the pass's 4 GPU
    # actors fit on it together; a hold of the full bundles would start 4 more GPU nodes.
    rescore = [resource_requests(preset)["rescore"]] * 4
    assert _ray_picks(cluster_yaml, held_bundles(preset) + rescore, existing=["gpu_train"]) == {}
    assert _ray_picks(cluster_yaml, training_bundles(preset) + rescore, existing=["gpu_train"]) == {"gpu_teacher": 4}
    assert held_bundles(load_config(["cluster.train_workers=2"])) == [{"CPU": 1.0}] * 2  # no slot: full bundles


def _ray_picks(cluster_yaml: dict, bundles: list[dict], existing: list[str] = ()) -> dict[str, int]:
    """What Ray's own (v1) autoscaler would launch for ``bundles`` (a ``request_resources``
    request: fitted on the ``existing`` nodes as if idle, then new nodes for the rest)."""
    from ray.autoscaler._private import resource_demand_scheduler as rds

    def scorer(node, demands, node_type):
        return rds._default_utilization_scorer(
            node, demands, node_type, node_availability_summary=rds.NodeAvailabilitySummary(node_availabilities={})
        )

    types = cluster_yaml["available_node_types"]
    nodes = [{k: float(v) for k, v in types[t]["resources"].items()} for t in existing]
    rest, _ = rds.get_bin_pack_residual(nodes, bundles)
    counts = {t: list(existing).count(t) for t in set(existing)}
    picked, left = rds.get_nodes_for(types, counts, cluster_yaml["head_node_type"], 14, rest, scorer)
    assert not left
    return {t: n for t, n in picked.items() if n}


def test_train_slot_makes_the_autoscaler_start_a_training_node(cluster_yaml):
    # 4 one-GPU workers: by utilization the autoscaler prefers four teacher nodes (each
    # fully used) to one training node; asking for train_slot leaves it one choice.
    assert _ray_picks(cluster_yaml, [{"CPU": 1.0, "GPU": 1.0}] * 4) == {"gpu_teacher": 4}
    assert _ray_picks(cluster_yaml, training_bundles(load_config(["--config", "cluster"]))) == {"gpu_train": 1}
    teacher = resource_requests(load_config(["--config", "cluster"]))["teacher"]
    assert _ray_picks(cluster_yaml, [teacher] * 4) == {"gpu_teacher": 4}


def _standing_request() -> list[dict]:
    """The request the (v1) autoscaler reads: what ``ray.autoscaler.sdk.request_resources`` last wrote."""
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


def test_hold_capacity_requests_for_the_block_and_releases_after(ray_local):
    bundles = [{"CPU": 1.0, "train_slot": 1.0}] * 2
    with hold_capacity(bundles) as held:
        assert held == bundles
        assert _standing_request() == bundles
    assert _standing_request() == []
    with pytest.raises(RuntimeError, match="boom"):
        with hold_capacity(bundles):
            assert _standing_request() == bundles
            raise RuntimeError("boom")
    assert _standing_request() == []  # released on error too


def test_hold_capacity_refreshes_and_merges_with_other_requesters(ray_local):
    # A Ray Data stage registers with the same coordinator: the hold stays beside it.
    import ray
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    coordinator = get_or_create_autoscaling_coordinator()
    with hold_capacity([{"CPU": 1.0}], refresh_s=0.05):
        ray.get(coordinator.request_resources.remote(requester_id="data", resources=[{"GPU": 1.0}], expire_after_s=60))
        assert sorted(map(json.dumps, _standing_request())) == sorted(map(json.dumps, [{"CPU": 1.0}, {"GPU": 1.0}]))
    assert _standing_request() == [{"GPU": 1.0}]
    ray.get(coordinator.cancel_request.remote("data"))
    assert _standing_request() == []
    with hold_capacity([{"CPU": 0.0}]) as held:  # nothing to hold: no request at all
        assert held == [] and _standing_request() == []


def test_elastic_training_scaling():
    from ray.train import ScalingConfig

    from cluster.runtime.resources import per_worker_batch, train_scaling

    fixed = train_scaling(load_config(["cluster.train_workers=4"]))
    assert not fixed.elastic and fixed.ray_num_workers == 4 and fixed.global_batch(16) == 0
    elastic = train_scaling(load_config(["cluster.train_workers=4", "cluster.min_train_workers=2"]))
    assert elastic.elastic and elastic.ray_num_workers == (2, 4)
    sc = elastic.scaling_config()
    assert isinstance(sc, ScalingConfig) and sc.elasticity_enabled and (sc.min_workers, sc.max_workers) == (2, 4)
    # Ray 2.60 picks its elastic policy for such a config (open source, no Anyscale).
    from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy
    from ray.train.v2._internal.execution.scaling_policy.factory import create_scaling_policy

    assert isinstance(create_scaling_policy(sc), ElasticScalingPolicy)
    # min == max is not elastic; the global batch is kept as the group shrinks.
    assert not train_scaling(load_config(["cluster.train_workers=2", "cluster.min_train_workers=2"])).elastic
    assert elastic.global_batch(16) == 64
    assert [per_worker_batch(64, w) for w in (4, 3, 2, 1)] == [16, 21, 32, 64]
    with pytest.raises(ValueError, match="min_train_workers"):
        train_scaling(load_config(["cluster.train_workers=2", "cluster.min_train_workers=3"]))
    with pytest.raises(ValueError):
        per_worker_batch(0, 2)
