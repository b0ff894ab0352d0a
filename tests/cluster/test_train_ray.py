"""Ray Train for real: 2 gloo workers on a local Ray, a worker killed mid-run, and a
driver stopped mid-training then re-run."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from cluster.checkpoints import load_student, load_torch
from cluster.pipeline import extract_stage
from cluster.storage import Storage
from cluster.train import train_local
from distill.config import load_config
from tests.conftest import REPO

ARGS = ["--config", "smoke", "data.categories=[chair,lamp]", "data.per_category=3", "train.epochs=4", "progress=false"]


def _prepared(root, run):
    cfg = load_config([*ARGS, f"storage.root={root}", f"run={run}", "cluster.backend=local"])
    storage = Storage.from_config(cfg.storage)
    extract_stage(cfg, storage)
    return storage


def test_two_workers_survive_a_killed_worker_and_finish_the_plan(tmp_path):
    # A fresh interpreter: Ray Train's controller does not survive a second Ray session in
    # one process (other test modules start and stop theirs), and this is how users run it.
    storage = _prepared(tmp_path, "ddp")
    marker = tmp_path / "killed.txt"
    env = {
        **os.environ,
        "PARTDISTILL_FAULT_EPOCH": "2",
        "PARTDISTILL_FAULT_MARKER": str(marker),
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)
    argv = [*ARGS, f"storage.root={tmp_path}", "run=ddp", "cluster.backend=ray", "cluster.num_cpus=2"]
    argv += ["cluster.train_workers=2", "train.max_failures=2"]
    run = subprocess.run(
        [sys.executable, "jobs/train.py", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert marker.exists(), "the fault hook did not fire"
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["backend"] == "ray" and summary["workers"] == 2
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
