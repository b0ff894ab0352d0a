"""Ray Train for real: 2 gloo workers on a local Ray, a worker killed mid-run, and a
driver stopped mid-training then re-run."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from cluster.checkpoints import load_student, load_torch
from cluster.pipeline import extract_stage
from cluster.runtime import connect
from cluster.storage import Storage
from cluster.train import train_local
from distill.config import ClusterConfig, load_config
from tests.conftest import REPO

ray = pytest.importorskip("ray")

ARGS = ["--config", "smoke", "data.categories=[chair,lamp]", "data.per_category=3", "train.epochs=4", "progress=false"]


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    marker = tmp_path_factory.mktemp("fault") / "killed.txt"
    env = {"PARTDISTILL_FAULT_EPOCH": "2", "PARTDISTILL_FAULT_MARKER": str(marker), "RAY_AUTH_MODE": "disabled"}
    if ray.is_initialized():
        ray.shutdown()
    # The project's own way of starting a local Ray (loopback only): a plain ray.init after
    # another module's connect() would mix addresses and never schedule a task.
    connect(ClusterConfig(num_cpus=2), runtime_env={"env_vars": env})
    yield marker
    ray.shutdown()


def _prepared(root, run):
    cfg = load_config([*ARGS, f"storage.root={root}", f"run={run}", "cluster.backend=local"])
    storage = Storage.from_config(cfg.storage)
    extract_stage(cfg, storage)
    return storage


def test_two_workers_survive_a_killed_worker_and_finish_the_plan(ray_local, tmp_path):
    from cluster.train_ray import train_on_ray

    storage = _prepared(tmp_path, "ddp")
    cfg = load_config([*ARGS, f"storage.root={tmp_path}", "run=ddp", "cluster.train_workers=2", "train.max_failures=2"])
    summary = train_on_ray(cfg, storage, "ddp/shapes", "ddp/knowledge/round_0")
    assert ray_local.exists(), "the fault hook did not fire"
    (student,) = summary["students"]
    assert student["epochs"] == 4 and student["rounds"] == 1
    model, space, bundle = load_student(storage, "ddp", "all")
    assert [h["epoch"] for h in bundle["history"]] == [1.0, 2.0, 3.0, 4.0]
    assert space.categories == ("Chair", "Lamp")
    assert storage.exists("ddp/knowledge/round_1")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_driver_stopped_mid_training_then_rerun_continues(tmp_path):
    _prepared(tmp_path, "resume")
    argv = [*ARGS, f"storage.root={tmp_path}", "run=resume", "cluster.backend=local", "train.epochs=6"]
    proc = subprocess.Popen(
        [sys.executable, "jobs/train.py", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    last = tmp_path / "resume" / "checkpoints" / "all" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no checkpoint before the deadline"
    storage = Storage(str(tmp_path))
    stopped_at = load_torch(storage, "resume/checkpoints/all/last.pt")["epoch"]
    assert 1 <= stopped_at < 6 and not storage.exists("resume/checkpoints/all/final.pt")
    cfg = load_config(argv)
    summary = train_local(cfg, storage, "resume/shapes", "resume/knowledge/round_0")
    (student,) = summary["students"]
    assert student["epochs"] == 6
    _, _, bundle = load_student(storage, "resume", "all")
    assert len(bundle["history"]) == 6
