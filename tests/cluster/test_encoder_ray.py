"""Encoder pretraining on Ray Train for real: 2 gloo workers on a local Ray fed by Ray Data,
one killed after an epoch; the group restarts from ``last.pt`` and the encoder loads into a
student. The map function of the ingest in process."""

import json

import numpy as np
import pytest
import torch

from cluster.config import load_config, to_dict
from cluster.passes.ingest import ingest
from cluster.store.storage import Storage
from cluster.training.encoder import plan_encoder, read_clouds
from cluster.training.encoder_ray import cloud_rows
from distill.student import build_student, load_pretrained_encoder
from tests.conftest import run_fresh

ARGS = ["--config", "smoke", "data.categories=[chair,lamp]", "data.per_category=3", "progress=false"]
ARGS += ["cluster.part_shapes=2"]  # 2 categories x 3 shapes: 4 parts

DRIVER = """
import functools, sys
from cluster.job import run_job
from cluster.pipeline import pretrain_encoder
from tests.cluster.test_train_ray import crash_once

hook = functools.partial(crash_once, sys.argv[1], int(sys.argv[2]))
run_job("pretrain_encoder", functools.partial(pretrain_encoder, fault_hook=hook), sys.argv[3:])
"""


def test_cloud_rows_are_the_parts_clouds(tmp_path):
    cfg = load_config([*ARGS, f"storage.root={tmp_path}", "run=rows"])
    storage = Storage.from_config(cfg.storage)
    ingest(cfg, storage)
    plan = plan_encoder(storage, "rows/shapes")
    assert plan.shapes == 6 and len(plan.parts) == 4
    part = plan.parts[0]
    rows = cloud_rows({"part": np.array([part])}, to_dict(cfg), "rows/shapes")
    clouds = read_clouds(storage, "rows/shapes", part, 1024, cfg.seed, False)
    assert rows["points"].shape == (len(clouds), 1024 * 3) and "normals" not in rows
    for row, (points, _) in zip(rows["points"], clouds, strict=True):
        np.testing.assert_array_equal(row.reshape(1024, 3), points)


@pytest.mark.slow  # about a minute: a local Ray, Ray Train, a restarted worker group
def test_two_workers_survive_a_killed_worker(tmp_path):
    marker = tmp_path / "killed.txt"
    argv = [*ARGS, f"storage.root={tmp_path}", "run=encray", "cluster.backend=ray", "cluster.num_cpus=2"]
    argv += ["cluster.train_workers=2", "train.max_failures=2", "encoder.epochs=2"]
    run = run_fresh(["-c", DRIVER, str(marker), "1", *argv], timeout=600)
    assert marker.read_text() == "epoch 1 rank 1 of 2\n"
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["backend"] == "ray" and summary["epochs"] == 2
    bundle = torch.load(summary["encoder"], weights_only=True)
    assert [h["epoch"] for h in bundle["history"]] == [1.0, 2.0]
    cfg = load_config(argv)
    report = load_pretrained_encoder(build_student(cfg.student, 3), bundle, summary["encoder"])
    assert not report.missing and not report.unexpected
