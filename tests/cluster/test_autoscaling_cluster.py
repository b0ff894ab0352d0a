"""The smoke pretrain run on an autoscaling cluster that starts as the head alone.

The cluster (``tests/cluster/fake_autoscaler.py``) is Ray's fake multi-node provider behind
a real head and Ray's own autoscaler; its node types are ``ray_cluster.yaml``'s, scaled
down by ``cluster.autoscaling.fake_node_types`` (GPUs are logical: the simulated teacher and
the student run on CPU where they land). The run asks what the ``cluster`` preset asks: a
one-GPU teacher actor, training workers that need ``train_slot`` (only ``gpu_train`` offers
it), a one-GPU re-scoring actor. The stages are the real ones (``cluster.pipeline``), run
one after the other so the recorder knows which stage each node change belongs to.

Each test runs in a fresh interpreter (as test_two_node.py does): Ray Data keeps state of
the first Ray session a process joins.
"""

import contextlib
import os
import re
import threading
import time

import numpy as np
import pytest

from tests.conftest import run_test_fresh

# Minutes each (a fake cluster scaling up and down): the autoscaling lane only; the children
# too, so that the other lanes deselect them rather than listing them as skipped.
pytestmark = pytest.mark.autoscaling

CHILD = "PARTDISTILL_AUTOSCALING_CHILD"
IDLE_TIMEOUT_S = 8.0
PATIENT_IDLE_TIMEOUT_S = 45.0
WAIT_S = 300.0
"""Liveness bound on waiting for a node change (not a timing assertion: a machine this
busy may take minutes, and a hung test must still end)."""

ARGS = [
    "--config", "smoke", "cluster.backend=ray", "cluster.render_cpus=1", "cluster.teacher_gpus=1",
    "cluster.train_workers=2", "cluster.train_resource=train_slot", "cluster.rescore_gpus=1",
]  # fmt: skip


def _in_fresh_interpreter(test: str) -> None:
    run_test_fresh(__file__, test, CHILD, timeout=1500, show=True)


def test_stages_scale_the_cluster_up_and_down():
    _in_fresh_interpreter("test_child_stages_scale_the_cluster_up_and_down")


def test_held_capacity_outlives_the_idle_timeout():
    _in_fresh_interpreter("test_child_held_capacity_outlives_the_idle_timeout")


def test_node_lost_mid_extraction_and_mid_training():
    _in_fresh_interpreter("test_child_node_lost_mid_extraction_and_mid_training")


child = pytest.mark.skipif(not os.environ.get(CHILD), reason="runs in a fresh interpreter, started by a test above")


@contextlib.contextmanager
def _fake_cluster(idle_timeout_s: float):
    from tests.cluster.fake_autoscaler import FakeAutoscalingCluster, Recorder

    cluster = FakeAutoscalingCluster(idle_timeout_s=idle_timeout_s).start()
    try:
        cluster.connect()
        recorder = Recorder(cluster.node_types).start()
        yield cluster, recorder
        recorder.stop()
        print("\nnodes alive over time:\n" + recorder.table())
        print("autoscaler decisions:\n" + "\n".join(cluster.decisions()))
    finally:
        cluster.shutdown()


@pytest.fixture
def fake_cluster():
    with _fake_cluster(IDLE_TIMEOUT_S) as c:
        yield c


@pytest.fixture
def patient_cluster():
    """Idle timeout above a fit's start-up (the gap between a pass's hold and Ray Train's own
    request: 10–20 s measured here), as the real 10 minutes are."""
    with _fake_cluster(PATIENT_IDLE_TIMEOUT_S) as c:
        yield c


def _wait(what: str, cond, timeout_s: float = WAIT_S, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f} s")


def _config(tmp_path, cluster, run: str):
    from cluster.config import load_config
    from cluster.storage import Storage

    cfg = load_config([*ARGS, f"run={run}", f"storage.root={tmp_path}", f"cluster.address={cluster.address}"])
    return cfg, Storage.from_config(cfg.storage)


def _workers_alive(recorder) -> dict[str, int]:
    from cluster.autoscaling import FAKE_HEAD_TYPE

    recorder.poll()
    counts: dict[str, int] = {}
    for t in recorder.samples[-1].nodes.values():
        if t != FAKE_HEAD_TYPE:
            counts[t] = counts.get(t, 0) + 1
    return counts


def _bound(cfg, types: dict, stage_bundles: list[dict], node_type: str) -> int:
    from cluster.autoscaling import nodes_needed

    return nodes_needed(stage_bundles, types[node_type]["resources"])


@child
def test_child_stages_scale_the_cluster_up_and_down(tmp_path, patient_cluster):
    from cluster.autoscaling import training_bundles
    from cluster.pipeline import evaluate_stage, extract_stage, train_stage
    from cluster.runtime import resource_requests, teacher_actor_options

    cluster, rec = patient_cluster
    assert _workers_alive(rec) == {}, "the cluster starts as the head alone"
    cfg, storage = _config(tmp_path, cluster, "auto")
    types = cluster.node_types
    teacher = resource_requests(cfg)["teacher"]

    rec.set_stage("extract")
    out = extract_stage(cfg, storage)
    assert out["extract"]["new"] == 12 and out["extract"]["rejected"] == 0
    rec.set_stage("train")
    trained = train_stage(cfg, storage)
    (student,) = trained["students"]
    assert student["epochs"] == cfg.train.epochs and len(student["rescoring"]) == cfg.train.bd_rounds
    rec.set_stage("idle")
    _wait("every worker node to idle out", lambda: _workers_alive(rec) == {})
    rec.set_stage("evaluate")
    evaluated = evaluate_stage(cfg, storage)
    assert evaluated["evaluated_shapes"] == 6 and "student" in evaluated
    rec.set_stage("end")
    _wait("every worker node to idle out", lambda: _workers_alive(rec) == {})
    print("\n" + rec.table())

    # Extraction: the teacher's GPU request starts a teacher node, and no more than the pool needs.
    assert "gpu_teacher" in rec.launched("extract")
    need = _bound(cfg, types, [teacher] * teacher_actor_options(cfg).size, "gpu_teacher")
    assert need == 1 and rec.peak("extract").get("gpu_teacher", 0) <= need
    assert "gpu_train" not in rec.peak("extract"), "nothing in extraction asks for train_slot"
    # Training: train_slot starts a training node, one (both workers fit it), kept from the
    # first fit through the re-scoring pass to the last fit (one launch, never removed mid-stage).
    assert "gpu_train" in rec.launched("train")
    rescore = resource_requests(cfg)["rescore"]
    need = _bound(cfg, types, [*training_bundles(cfg), rescore], "gpu_train")
    assert need == 1 and rec.peak("train")["gpu_train"] == need
    # Ray Train asks for its workers while a fit runs, the hold while a re-scoring pass runs:
    # never both at once (the coordinator adds requests up, which would start a second node).
    slots = [sum(1 for b in s.request if b.get("train_slot")) for s in rec.samples if s.stage == "train"]
    assert max(slots) == cfg.cluster.train_workers, slots
    train_nodes = [{n for n, t in s.nodes.items() if t == "gpu_train"} for s in rec.samples if s.stage == "train"]
    first = next(i for i, ids in enumerate(train_nodes) if ids)
    assert all(ids == train_nodes[first] for ids in train_nodes[first:]), "the training node left mid-stage"
    # Evaluation extracts the held-out shapes' knowledge: a teacher node again, no training node.
    assert "gpu_teacher" in rec.launched("evaluate") and "gpu_train" not in rec.launched("evaluate")
    # Idle nodes go: the autoscaler's own log says it removed them as idle.
    removed = [d for d in cluster.decisions() if d.startswith("Removing")]
    assert any("gpu_teacher (idle)" in d for d in removed) and any("gpu_train (idle)" in d for d in removed)


@child
def test_child_node_lost_mid_extraction_and_mid_training(tmp_path, fake_cluster):
    import ray

    from cluster.extract import extract_local
    from cluster.pipeline import dirs, ensure_shapes, extract, train_stage
    from distill.records import UNIT_SCHEMA, table_to_units

    cluster, rec = fake_cluster
    cfg, storage = _config(tmp_path, cluster, "loss")
    shapes_dir, units_dir = dirs(cfg)
    ensure_shapes(cfg, storage, cfg.data, shapes_dir)

    def node_of(node_type: str) -> str | None:
        rec.poll()
        ids = [n for n, t in rec.samples[-1].nodes.items() if t == node_type]
        return ids[0] if ids else None

    def in_use(resource: str) -> bool:
        return ray.available_resources().get(resource, 0.0) < ray.cluster_resources().get(resource, 0.0)

    # -- a teacher node lost while the teacher actor holds its GPU --------------------
    def lose_teacher_node() -> None:
        node = _wait("the teacher actor on a teacher node", lambda: in_use("GPU") and node_of("gpu_teacher"))
        lost["extract"] = (node, len(storage.done_ids(units_dir)), cluster.kill_node(node))

    lost: dict[str, tuple] = {}
    rec.set_stage("extract")
    killer = threading.Thread(target=lose_teacher_node)
    killer.start()
    try:
        out = extract(cfg, storage, shapes_dir, units_dir)
    except Exception as e:  # the stage gave up: a re-run resumes from storage
        print(f"extraction failed after the node loss ({type(e).__name__}: {e}); re-running")
        out = extract(cfg, storage, shapes_dir, units_dir)
    killer.join()
    node, done_before, killed = lost["extract"]
    assert killed > 0 and done_before < 12, "the node went while extraction ran"
    assert len(storage.done_ids(units_dir)) == 12 and out["rejected"] == 0
    # Every shape's knowledge exactly once: the same units as a single-process extraction.
    ref = extract_local(cfg, storage, shapes_dir, f"{cfg.run}/reference")
    got = storage.read_table(units_dir, schema=UNIT_SCHEMA).column("shape_id").to_pylist()
    want = storage.read_table(f"{cfg.run}/reference", schema=UNIT_SCHEMA).column("shape_id").to_pylist()
    assert sorted(got) == sorted(want) and ref["new"] == 12
    on_ray = table_to_units(storage.read_table(units_dir, schema=UNIT_SCHEMA))
    for sid, units in table_to_units(storage.read_table(f"{cfg.run}/reference", schema=UNIT_SCHEMA)).items():
        np.testing.assert_array_equal(units.score, on_ray[sid].score)

    # -- a training node lost mid-fit, after a checkpoint ----------------------------
    ckpt = f"{cfg.run}/checkpoints/all"

    def lose_training_node() -> None:
        node = _wait(
            "the training workers on a training node with a checkpoint",
            lambda: in_use("train_slot") and storage.exists(ckpt, "last.pt") and node_of("gpu_train"),
        )
        lost["train"] = (node, storage.exists(ckpt, "final.pt"), cluster.kill_node(node))

    rec.set_stage("train")
    killer = threading.Thread(target=lose_training_node)
    killer.start()
    try:
        trained = train_stage(cfg, storage)
    except Exception as e:
        print(f"training failed after the node loss ({type(e).__name__}: {e}); re-running")
        trained = train_stage(cfg, storage)
    killer.join()
    node, finished_before, killed = lost["train"]
    assert killed > 0 and not finished_before, "the node went while training ran"
    info = storage.read_json(f"{ckpt}/train_info.json")
    assert info["epochs"] == cfg.train.epochs and info["rounds"] == cfg.train.bd_rounds
    assert storage.exists(ckpt, "final.pt")
    assert trained["students"] or trained["skipped"] == ["all"]
    launched = [d for d in cluster.decisions() if d.startswith("Adding") and "gpu_train" in d]
    print("training-node launches:", launched)


@child
def test_child_held_capacity_outlives_the_idle_timeout(fake_cluster):
    """``hold_capacity`` keeps an idle training node for as long as the block runs (four idle
    timeouts here, as a re-scoring pass longer than ``idle_timeout_minutes`` would), and the
    node goes once the block ends."""
    import ray
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    from cluster.autoscaling import held_bundles, hold_capacity
    from cluster.config import load_config

    cluster, rec = fake_cluster
    cfg = load_config(ARGS)
    # Up before the node idles: in a run, Ray Data and Ray Train have started it long before.
    ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote())

    @ray.remote(num_cpus=1, resources={"train_slot": 1})
    def on_a_training_node() -> str:
        return ray.get_runtime_context().get_node_id()

    rec.set_stage("fit")
    node = ray.get(on_a_training_node.remote())
    assert rec.samples[-1].nodes.get(node) == "gpu_train" or _wait("the node", lambda: node in rec.samples[-1].nodes)
    rec.set_stage("held")
    with hold_capacity(held_bundles(cfg)):
        deadline = time.monotonic() + 4 * IDLE_TIMEOUT_S
        while time.monotonic() < deadline:
            rec.poll()
            assert node in rec.samples[-1].nodes, "the held training node was removed"
            time.sleep(0.5)
    rec.set_stage("released")
    _wait("the released node to idle out", lambda: _workers_alive(rec) == {})
    assert [d for d in cluster.decisions() if "gpu_train" in d] == [
        "Adding 1 node(s) of type gpu_train.",
        "Removing 1 nodes of type gpu_train (idle).",
    ]


def test_elastic_training_goes_on_with_fewer_workers():
    _in_fresh_interpreter("test_child_elastic_training_goes_on_with_fewer_workers")


@child
def test_child_elastic_training_goes_on_with_fewer_workers(tmp_path, capfd):
    """``cluster.min_train_workers=1`` of 2, on training nodes of one ``train_slot`` each (so
    the two workers take two nodes): one node lost mid-fit, and Ray Train's elastic policy
    restarts the group on the workers that still fit instead of waiting for a replacement;
    the student still reaches every planned epoch, from its last checkpoint."""
    import ray

    from cluster.autoscaling import fake_node_types
    from cluster.extract import extract_local
    from cluster.pipeline import dirs, ensure_shapes, train_stage
    from tests.cluster.fake_autoscaler import FakeAutoscalingCluster, Recorder, load_cluster_yaml

    types = fake_node_types(load_cluster_yaml(), max_cpus=4, max_other=1)
    assert types["gpu_train"]["resources"]["train_slot"] == 1 and types["gpu_train"]["max_workers"] == 2
    cluster = FakeAutoscalingCluster(types, idle_timeout_s=PATIENT_IDLE_TIMEOUT_S).start()
    try:
        cluster.connect()
        rec = Recorder(types).start()
        cfg, storage = _config(tmp_path, cluster, "elastic")
        cfg.cluster.min_train_workers = 1
        cfg.train.bd_rounds, cfg.train.epochs = 0, 6
        shapes_dir, units_dir = dirs(cfg)
        ensure_shapes(cfg, storage, cfg.data, shapes_dir)
        extract_local(cfg, storage, shapes_dir, units_dir)  # knowledge in this process: the test is about training
        ckpt = f"{cfg.run}/checkpoints/all"

        def two_workers_checkpointed() -> list[str] | None:
            rec.poll()
            nodes = [n for n, t in rec.samples[-1].nodes.items() if t == "gpu_train"]
            busy = ray.available_resources().get("train_slot", 0.0) == 0 and len(nodes) == 2
            return nodes if busy and storage.exists(ckpt, "last.pt") else None

        lost: dict[str, int] = {}

        def lose_one() -> None:
            nodes = _wait("two workers on two training nodes, checkpointed", two_workers_checkpointed)
            lost["killed"] = cluster.kill_node(nodes[0])

        rec.set_stage("train")
        killer = threading.Thread(target=lose_one)
        killer.start()
        trained = train_stage(cfg, storage)
        killer.join()
        rec.stop()
        print("\n" + rec.table())
    finally:
        cluster.shutdown()
    captured = capfd.readouterr()
    out = captured.out + captured.err  # the Train controller's log lines, forwarded to this driver
    assert lost["killed"] > 0
    info = storage.read_json(f"{ckpt}/train_info.json")
    assert info["epochs"] == 6 and storage.exists(ckpt, "final.pt") and trained["students"]
    sizes = sorted({int(m) for m in re.findall(r"Started training worker group of size (\d+)", out)})
    assert sizes == [1, 2], sizes  # two workers, then one after the node went
