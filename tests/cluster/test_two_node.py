"""A two-node Ray cluster on one machine (``ray.cluster_utils.Cluster``): a CPU head (1 CPU)
and a "GPU" node (2 CPUs and one declared GPU, like the GPU node types of ray_cluster.yaml,
which have CPUs beside their GPUs; the simulated teacher and the student run on CPU there).
Stages that ask for a GPU can only be placed on the second node, so a run that finishes
has crossed nodes: render tasks on the head, teacher actors and re-scoring actors on the
GPU node, shape and knowledge parts read and written by both through shared storage."""

import os

import numpy as np
import pytest
import torch

from cluster.config import load_config
from cluster.passes.extract import extract
from cluster.passes.ingest import ingest
from cluster.passes.rescore import rescore_pass
from cluster.runtime.connect import loopback_only
from cluster.store.storage import Storage
from cluster.training.checkpoints import load_torch
from cluster.training.samples import read_scores
from cluster.training.students import plan_students
from cluster.training.train import fit_student, knowledge_dir, last_state, prepare_fit
from distill.records import UNIT_SCHEMA, table_to_units
from tests.backends import here, on_ray
from tests.conftest import run_test_fresh

# About 45 s (a second interpreter and a two-node cluster): the slow lane only.
pytestmark = pytest.mark.slow

CHILD = "PARTDISTILL_TWO_NODE_CHILD"

RUN = "two"
ARGS = [
    "--config",
    "smoke",
    "data.per_category=2",
    f"run={RUN}",
    "cluster.teacher_gpus=1",
    "cluster.rescore_gpus=1",
    "cluster.render_cpus=1",
]


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a private loopback cluster (docs/design.md §7)
    loopback_only()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1"},
    )
    cluster.add_node(num_cpus=2, num_gpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


def test_two_node_cluster_in_a_fresh_interpreter():
    """Runs the test below in its own process: Ray Data keeps state of the first Ray session
    a process joins (another test module's one-CPU, no-GPU local Ray), and a second session
    in the same process then cancels the GPU actors it cannot place."""
    run_test_fresh(__file__, "test_two_nodes_extract_and_rescore_across_nodes", CHILD)


@pytest.mark.skipif(not os.environ.get(CHILD), reason="runs in a fresh interpreter, started by the test above")
def test_two_nodes_extract_and_rescore_across_nodes(tmp_path, two_nodes):
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2 and sorted(n["Resources"].get("GPU", 0.0) for n in nodes) == [0.0, 1.0]
    cfg = load_config([*ARGS, f"storage.root={tmp_path}"])
    storage = Storage.from_config(cfg.storage)
    ingest(cfg, storage, cfg.data, f"{RUN}/shapes")

    out = extract(on_ray(cfg), storage, f"{RUN}/shapes", knowledge_dir(RUN, 0))
    assert out["new"] == 6 and out["rejected"] == 0
    local = extract(here(cfg), storage, f"{RUN}/shapes", f"{RUN}/local")
    assert local["units"] == out["units"]
    ray_units = table_to_units(storage.read_table(knowledge_dir(RUN, 0), schema=UNIT_SCHEMA))
    mine = table_to_units(storage.read_table(f"{RUN}/local", schema=UNIT_SCHEMA))
    for sid, u in mine.items():
        np.testing.assert_array_equal(u.score, ray_units[sid].score)

    # A student stopped for re-scoring (in this process), re-scored by an actor on the GPU node.
    (plan,) = plan_students(cfg, storage, f"{RUN}/shapes", knowledge_dir(RUN, 0))
    assert fit_student(cfg, storage, plan, torch.device("cpu"), None).rescore_due
    ckpt = f"{RUN}/checkpoints/all/last.pt"
    state = last_state(storage, f"{RUN}/checkpoints/all")
    storage.reads.reset()
    _, summary = prepare_fit(
        storage, plan, f"{RUN}/checkpoints/all", state, lambda snap: rescore_pass(on_ray(cfg), storage, plan, snap)
    )
    assert storage.reads.rows == {}
    assert summary["shapes"] == 6 and summary["round"] == 1 and summary["parts"] == len(plan.items)
    state = load_torch(storage, ckpt)
    assert state["round"] == 1 and not state["pending_rescore"]
    out_dir = plan.tables(1).scores_dir
    assert storage.list_parts(out_dir) == storage.list_parts(knowledge_dir(RUN, 0))
    scored = {sid: s for part in storage.list_parts(out_dir) for sid, s in read_scores(storage, out_dir, part).items()}
    assert set(scored) == set(mine)
    for sid, s in scored.items():
        assert len(s) == len(mine[sid].score)
