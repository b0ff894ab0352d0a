"""The smoke pretrain run on an autoscaling cluster that starts as the head alone.

The cluster (``tests/cluster/fake_autoscaler.py``) is Ray's fake multi-node provider behind
a real head and Ray's own autoscaler; its node types are ``ray_cluster.yaml``'s, scaled
down by ``cluster.runtime.autoscaling.fake_node_types`` (GPUs are logical: the simulated teacher and
the student run on CPU where they land). The run asks what the ``cluster`` preset asks: a
one-GPU teacher actor, training workers that need ``train_slot`` (only ``gpu_train`` offers
it), a one-GPU re-scoring actor. The stages are the real ones (``cluster.pipeline``), run
one after the other so the recorder knows which stage each node change belongs to.

Each test runs in a fresh interpreter (as test_two_node.py does): Ray Data and Ray Train keep
state of the first Ray session a process joins, and a driver that exits takes its actors,
tasks and placement groups with it, so no scenario sees another's. The cluster is one for
the module (``shared_cluster_handle``, started here, joined by each child): its start-up and
the autoscaler's idle timeouts were most of this lane's time. Each scenario starts from the
head alone (``_scenario`` waits, under a short idle timeout, until the autoscaler holds no
worker node), then sets its own idle timeout and node types on the running cluster
(``FakeAutoscalingCluster.reconfigure``); its recorder and the autoscaler decisions it
checks are its own.
"""

import contextlib
import os
import re
import threading
import time

import numpy as np
import pytest

from tests.backends import here
from tests.conftest import run_test_fresh

# Minutes (a fake cluster scaling up and down): the autoscaling lane only; the children
# too, so that the other lanes deselect them rather than listing them as skipped.
pytestmark = pytest.mark.autoscaling

CHILD = "PARTDISTILL_AUTOSCALING_CHILD"
CLUSTER = "PARTDISTILL_FAKE_CLUSTER"
"""The shared cluster's ``FakeAutoscalingCluster.handle`` (a child started alone starts its own)."""
IDLE_TIMEOUT_S = 8.0
PATIENT_IDLE_TIMEOUT_S = 45.0
QUICK_IDLE_TIMEOUT_S = 3.0
"""While nothing runs and a test only waits for idle nodes to go (before each scenario, and
the stages scenario's idle waits): how long an idle node is kept is not what is tested there."""
SETTLED_S = 3.0
"""The head alone this long (a few autoscaler updates) before a scenario starts."""
WAIT_S = 300.0
"""Liveness bound on waiting for a node change (not a timing assertion: a machine this
busy may take minutes, and a hung test must still end)."""

ARGS = [
    "--config", "smoke", "cluster.backend=ray", "cluster.render_cpus=1", "cluster.teacher_gpus=1",
    "cluster.train_workers=2", "cluster.train_resource=train_slot", "cluster.rescore_gpus=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def shared_cluster_handle():
    """One fake cluster for this module's tests, started here (this process does not join
    it); the children find it through ``CLUSTER``."""
    from tests.cluster.fake_autoscaler import FakeAutoscalingCluster

    cluster = FakeAutoscalingCluster(idle_timeout_s=IDLE_TIMEOUT_S).start()
    saved = os.environ.get(CLUSTER)
    os.environ[CLUSTER] = cluster.handle()  # fresh_env passes it on
    try:
        yield cluster.handle()
    finally:
        if saved is None:
            os.environ.pop(CLUSTER, None)
        else:
            os.environ[CLUSTER] = saved
        cluster.shutdown()


def _in_fresh_interpreter(test: str) -> None:
    run_test_fresh(__file__, test, CHILD, timeout=1500, show=True)


def test_stages_scale_the_cluster_up_and_down(shared_cluster_handle):
    _in_fresh_interpreter("test_child_stages_scale_the_cluster_up_and_down")


def test_held_capacity_outlives_the_idle_timeout(shared_cluster_handle):
    _in_fresh_interpreter("test_child_held_capacity_outlives_the_idle_timeout")


def test_node_lost_mid_extraction_and_mid_training(shared_cluster_handle):
    _in_fresh_interpreter("test_child_node_lost_mid_extraction_and_mid_training")


def test_elastic_training_goes_on_with_fewer_workers(shared_cluster_handle):
    _in_fresh_interpreter("test_child_elastic_training_goes_on_with_fewer_workers")


child = pytest.mark.skipif(not os.environ.get(CHILD), reason="runs in a fresh interpreter, started by a test above")


@pytest.fixture(scope="module")
def shared_cluster():
    """The module's cluster (``CLUSTER``), this process joined to it; a cluster of its own
    when started alone."""
    from tests.cluster.fake_autoscaler import FakeAutoscalingCluster

    handle = os.environ.get(CLUSTER)
    cluster = FakeAutoscalingCluster.attach(handle) if handle else FakeAutoscalingCluster().start()
    try:
        cluster.connect()
        yield cluster
    finally:
        cluster.shutdown()  # disconnects; stops the cluster only where this process started it


def _head_alone(cluster) -> bool:
    """No worker node alive, none held by the autoscaler (a killed one until its heartbeat
    times out), and no standing request that would start one."""
    import ray

    from tests.cluster.fake_autoscaler import standing_request

    workers = [n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]
    return not workers and not cluster.provider_workers() and not standing_request()


@contextlib.contextmanager
def _scenario(cluster, idle_timeout_s: float, node_types: dict | None = None):
    """The cluster back to the head alone (the last scenario's nodes gone), then under this
    scenario's idle timeout and node types (default: ``default_node_types``) → (cluster, a
    recorder started now, the autoscaler's decisions from now)."""
    from tests.cluster.fake_autoscaler import Recorder, default_node_types

    cluster.reconfigure(idle_timeout_s=QUICK_IDLE_TIMEOUT_S)
    since: list[float] = []

    def settled() -> bool:
        if not _head_alone(cluster):
            since.clear()
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] >= SETTLED_S

    _wait("the cluster to be the head alone (the last scenario's nodes gone)", settled)
    cluster.reconfigure(idle_timeout_s=idle_timeout_s, node_types=node_types or default_node_types())
    mark = len(cluster.decisions())
    recorder = Recorder(cluster.node_types).start()
    try:
        yield cluster, recorder, lambda: cluster.decisions()[mark:]
    finally:
        recorder.stop()
        print("\nnodes alive over time:\n" + recorder.table())
        print("autoscaler decisions:\n" + "\n".join(cluster.decisions()[mark:]))


@pytest.fixture
def fake_cluster(shared_cluster):
    with _scenario(shared_cluster, IDLE_TIMEOUT_S) as c:
        yield c


@pytest.fixture
def patient_cluster(shared_cluster):
    """Idle timeout above a fit's start-up (the gap between a pass's hold and Ray Train's own
    request: 10–20 s measured here), as the real 10 minutes are."""
    with _scenario(shared_cluster, PATIENT_IDLE_TIMEOUT_S) as c:
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
    from cluster.store.storage import Storage

    cfg = load_config([*ARGS, f"run={run}", f"storage.root={tmp_path}", f"cluster.address={cluster.address}"])
    return cfg, Storage.from_config(cfg.storage)


def _workers_alive(recorder) -> dict[str, int]:
    from cluster.runtime.autoscaling import FAKE_HEAD_TYPE

    recorder.poll()
    counts: dict[str, int] = {}
    for t in recorder.samples[-1].nodes.values():
        if t != FAKE_HEAD_TYPE:
            counts[t] = counts.get(t, 0) + 1
    return counts


def _bound(cfg, types: dict, stage_bundles: list[dict], node_type: str) -> int:
    from cluster.runtime.autoscaling import nodes_needed

    return nodes_needed(stage_bundles, types[node_type]["resources"])


@child
def test_child_stages_scale_the_cluster_up_and_down(tmp_path, patient_cluster):
    from cluster.pipeline import evaluate_stage, extract_stage, train_stage
    from cluster.runtime.autoscaling import training_bundles
    from cluster.runtime.resources import resource_requests, teacher_actor_options

    cluster, rec, decisions = patient_cluster
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
    cluster.reconfigure(idle_timeout_s=QUICK_IDLE_TIMEOUT_S)  # nothing runs: only waiting for the nodes to go
    _wait("every worker node to idle out", lambda: _workers_alive(rec) == {})
    cluster.reconfigure(idle_timeout_s=PATIENT_IDLE_TIMEOUT_S)
    rec.set_stage("evaluate")
    evaluated = evaluate_stage(cfg, storage)
    assert evaluated["evaluated_shapes"] == 6 and "student" in evaluated
    rec.set_stage("end")
    cluster.reconfigure(idle_timeout_s=QUICK_IDLE_TIMEOUT_S)
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
    removed = [d for d in decisions() if d.startswith("Removing")]
    assert any("gpu_teacher (idle)" in d for d in removed) and any("gpu_train (idle)" in d for d in removed)


@child
def test_child_held_capacity_outlives_the_idle_timeout(fake_cluster):
    """``hold_capacity`` keeps an idle training node for as long as the block runs (four idle
    timeouts here, as a re-scoring pass longer than ``idle_timeout_minutes`` would), and the
    node goes once the block ends."""
    import ray
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    from cluster.config import load_config
    from cluster.runtime.autoscaling import held_bundles, hold_capacity

    _cluster, rec, decisions = fake_cluster
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
    # The monitor logs an update's decisions after the update: the node can be seen gone first.
    _wait(
        "the removal in the autoscaler's log",
        lambda: any(d.startswith("Removing") and "gpu_train" in d for d in decisions()),
    )
    assert [d for d in decisions() if "gpu_train" in d] == [
        "Adding 1 node(s) of type gpu_train.",
        "Removing 1 nodes of type gpu_train (idle).",
    ]


@child
def test_child_node_lost_mid_extraction_and_mid_training(tmp_path, fake_cluster):
    import ray

    from cluster.passes.extract import extract as extract_parts
    from cluster.pipeline import ensure_shapes, extract, train_stage
    from cluster.store.paths import distill_tables
    from distill.records import UNIT_SCHEMA, table_to_units

    cluster, rec, decisions = fake_cluster
    cfg, storage = _config(tmp_path, cluster, "loss")
    shapes_dir, units_dir = distill_tables(cfg)
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
    ref = extract_parts(here(cfg), storage, shapes_dir, f"{cfg.run}/reference")
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
    launched = [d for d in decisions() if d.startswith("Adding") and "gpu_train" in d]
    print("training-node launches:", launched)


@child
def test_child_elastic_training_goes_on_with_fewer_workers(tmp_path, capfd, shared_cluster):
    """``cluster.min_train_workers=1`` of 2, on training nodes of one ``train_slot`` each (so
    the two workers take two nodes): one node lost mid-fit, and Ray Train's elastic policy
    restarts the group on the workers that still fit instead of waiting for a replacement;
    the student still reaches every planned epoch, from its last checkpoint."""
    import ray

    from cluster.passes.extract import extract as extract_parts
    from cluster.pipeline import ensure_shapes, train_stage
    from cluster.runtime.autoscaling import fake_node_types, held_bundles, hold_capacity
    from cluster.store.paths import distill_tables
    from tests.cluster.fake_autoscaler import load_cluster_yaml

    types = fake_node_types(load_cluster_yaml(), max_cpus=4, max_other=1)
    assert types["gpu_train"]["resources"]["train_slot"] == 1 and types["gpu_train"]["max_workers"] == 2
    # The shared cluster, from the head alone, with these node types from now on.
    with _scenario(shared_cluster, PATIENT_IDLE_TIMEOUT_S, node_types=types) as (cluster, rec, _decisions):
        cfg, storage = _config(tmp_path, cluster, "elastic")
        cfg.cluster.min_train_workers = 1
        cfg.train.bd_rounds, cfg.train.epochs = 0, 6
        shapes_dir, units_dir = distill_tables(cfg)
        # Shapes and knowledge in this process: the test is about training. A Ray Data pass
        # in this driver would leave its requester in Ray's autoscaling coordinator, which
        # reserves CPUs on the GPU nodes first (training nodes here) and so can leave the
        # elastic fit room for one worker on two nodes.
        ensure_shapes(here(cfg), storage, cfg.data, shapes_dir)
        extract_parts(here(cfg), storage, shapes_dir, units_dir)
        ckpt = f"{cfg.run}/checkpoints/all"

        def training_nodes() -> list[str]:
            rec.poll()
            return [n for n, t in rec.samples[-1].nodes.items() if t == "gpu_train"]

        # Both training nodes up before the fit: the elastic policy starts a group with what
        # is ready (one node, where the second is still starting) and looks again only
        # after ``elastic_resize_monitor_interval_s``, longer than this fit. The hold is
        # released before the fit (the coordinator would reserve the nodes for it, not for
        # Ray Train); the patient idle timeout keeps them until the fit takes them.
        rec.set_stage("warm")
        with hold_capacity(held_bundles(cfg), name="elastic-warm"):
            _wait(
                "two idle training nodes",
                lambda: len(training_nodes()) == 2 and ray.available_resources().get("train_slot", 0.0) == 2,
            )

        def two_workers_checkpointed() -> list[str] | None:
            nodes = training_nodes()
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
    # The Train controller's log lines, forwarded to this driver (asynchronously: a few
    # seconds at most for the last ones to arrive).
    out = ""
    deadline = time.monotonic() + 30.0
    while True:
        captured = capfd.readouterr()
        out += captured.out + captured.err
        sizes = sorted({int(m) for m in re.findall(r"Started training worker group of size (\d+)", out)})
        if sizes == [1, 2] or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    table = rec.table()
    print("\n" + table)  # the scenario's own print went to capfd
    tail = "\n".join(table.splitlines()[-12:])
    assert lost.get("killed", 0) > 0, f"no training node lost; worker groups of sizes {sizes}:\n{tail}"
    info = storage.read_json(f"{ckpt}/train_info.json")
    assert info["epochs"] == 6 and storage.exists(ckpt, "final.pt") and trained["students"]
    assert sizes == [1, 2], sizes  # two workers, then one after the node went
