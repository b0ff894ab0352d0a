"""Ray Train for real: 2 gloo workers on a local Ray fed by Ray Data, a worker killed
mid-run (``train_on_ray``'s ``fault_hook``), and a driver stopped mid-training then re-run;
the training ingest's pure pieces in process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cluster.config import load_config, to_dict
from cluster.pipeline import extract_stage
from cluster.store.storage import Storage
from cluster.training.checkpoints import load_student, load_torch
from cluster.training.samples import load_item, samples_to_table, table_to_batch, table_to_samples
from cluster.training.students import plan_students
from cluster.training.train import knowledge_dir, train_local
from cluster.training.train_ray import sample_rows, training_dataset
from distill.records import SAMPLE_SCHEMA
from tests.cluster.conftest import local_ray
from tests.conftest import REPO, run_fresh

ARGS = [
    "--config",
    "smoke",
    "data.categories=[chair,lamp]",
    "data.per_category=3",
    "train.epochs=4",
    "progress=false",
    "cluster.part_shapes=2",  # 2 categories × (2 + 1) shapes: 4 shape parts
]
PREP = "prep"


def crash_once(marker: str, at_epoch: int, epoch: int, rank: int, world: int) -> None:
    """The fault hook (``functools.partial(crash_once, marker, at_epoch)``): the last
    worker dies as a crash would (no exception, no cleanup) after ``at_epoch``, once."""
    if epoch == at_epoch and rank == world - 1 and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(f"epoch {epoch} rank {rank} of {world}\n")
        os._exit(1)


# The driver of the fault test: sets the hook in a fresh interpreter, then runs the job.
DRIVER = """
import functools, sys
from cluster.job import run_job
from cluster.pipeline import train_stage
from tests.cluster.test_train_ray import crash_once

hook = functools.partial(crash_once, sys.argv[1], int(sys.argv[2]))
run_job("train", functools.partial(train_stage, fault_hook=hook), sys.argv[3:])
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Shapes and round-0 knowledge of the run, extracted once (in process)."""
    root = tmp_path_factory.mktemp("prepared")
    cfg = load_config([*ARGS, f"storage.root={root}", f"run={PREP}", "cluster.backend=local"])
    extract_stage(cfg, Storage.from_config(cfg.storage))
    return root


def _copy_run(prepared, root, run) -> Storage:
    shutil.copytree(prepared / PREP, root / run)
    return Storage(str(root))


def _plan(root, run="r"):
    cfg = load_config([*ARGS, f"storage.root={root}", f"run={run}", "cluster.backend=local"])
    storage = Storage.from_config(cfg.storage)
    (plan,) = plan_students(cfg, storage, f"{run}/shapes", knowledge_dir(run, 0))
    return cfg, storage, plan


# -- the training ingest's pieces -------------------------------------------------------------
def test_sample_rows_are_the_items_training_samples(prepared, tmp_path):
    _copy_run(prepared, tmp_path, "r")
    cfg, storage, plan = _plan(tmp_path)
    assert len(plan.items) == 4 and plan.space.categories == ("Chair", "Lamp")
    seen = []
    for item in plan.items:
        rows = sample_rows(
            {k: np.array([v], dtype=object) for k, v in item.to_row().items()}, to_dict(cfg), plan.to_dict(), 0
        )
        assert rows.schema.equals(SAMPLE_SCHEMA)
        want = [
            s
            for s in load_item(storage, plan.tables(0), item, plan.space, cfg.data.num_points, cfg.seed)
            if s.num_units
        ]
        got = table_to_samples(rows)
        assert [s.shape_id for s in got] == [s.shape_id for s in want]
        for a, b in zip(got, want):
            for field in ("points", "normals", "point_idx", "unit_offsets", "unit_slot", "unit_score"):
                x, y = getattr(a, field), getattr(b, field)
                assert (x is None) == (y is None), field
                if x is not None:
                    torch.testing.assert_close(x, y, rtol=0, atol=0, check_dtype=False, msg=f"{a.shape_id}.{field}")
            assert a.category == b.category
        seen += [s.shape_id for s in got]
    assert len(seen) == len(set(seen)) == plan.with_units
    batch = table_to_batch(samples_to_table(want))
    assert batch.points.shape == (len(want), cfg.data.num_points, 3)


@pytest.mark.slow  # about 35 s (its own Ray, then Ray Data's split): with the Ray Train tests below
def test_training_dataset_splits_equally_over_two_workers(prepared, tmp_path):
    """The ingest on Ray Data: every training sample once an epoch, and the default
    ``DataConfig``'s ``streaming_split(equal=True)`` gives both workers as many."""
    import ray

    _copy_run(prepared, tmp_path, "r")
    cfg, storage, plan = _plan(tmp_path)
    # Its own Ray for this test only, not the module-scoped ``ray_local``: that one would
    # idle beside the Ray Train runs of the slow tests below, each in a fresh interpreter.
    with local_ray():
        ds = training_dataset(cfg, plan, 0)
        ids = [r["shape_id"] for r in ds.take_all()]
        assert len(ids) == len(set(ids)) == plan.with_units
        a, b = ds.streaming_split(2, equal=True)

        @ray.remote
        def consume(shard):
            return [str(x) for batch in shard.iter_batches(batch_size=2) for x in batch["shape_id"]]

        counts = ray.get([consume.remote(a), consume.remote(b)])
        assert len(counts[0]) == len(counts[1]) == plan.with_units // 2
        assert not set(counts[0]) & set(counts[1])
        assert storage.reads.rows == {}  # the driver planned from manifests only


# -- Ray Train, in fresh interpreters ----------------------------------------------------------
@pytest.mark.slow
def test_two_workers_survive_a_killed_worker_and_finish_the_plan(prepared, tmp_path):
    # A fresh interpreter: Ray Train's controller does not survive a second Ray session in
    # one process (other test modules start and stop theirs), and this is how users run it.
    storage = _copy_run(prepared, tmp_path, "ddp")
    marker = tmp_path / "killed.txt"
    argv = [*ARGS, f"storage.root={tmp_path}", "run=ddp", "cluster.backend=ray", "cluster.num_cpus=2"]
    argv += ["cluster.train_workers=2", "train.max_failures=2"]
    # Epoch 3: after the re-scoring pass, so the restarted group resumes a round-1 fit.
    run = run_fresh(["-c", DRIVER, str(marker), "3", *argv], timeout=600)
    assert marker.exists(), "the fault hook did not fire"
    assert marker.read_text() == "epoch 3 rank 1 of 2\n"
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["backend"] == "ray" and summary["workers"] == 2
    (student,) = summary["students"]
    assert student["epochs"] == 4 and student["rounds"] == 1
    (rescoring,) = student["rescoring"]
    assert rescoring["round"] == 1 and rescoring["parts"] == 4
    model, space, bundle = load_student(storage, "ddp", "all")
    assert [h["epoch"] for h in bundle["history"]] == [1.0, 2.0, 3.0, 4.0]
    assert [h.get("rescored", 0.0) for h in bundle["history"]] == [0, 1, 0, 0]
    assert space.categories == ("Chair", "Lamp")
    assert len(storage.list_parts("ddp/knowledge/round_1/all")) == len(storage.list_parts("ddp/knowledge/round_0"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_driver_stopped_mid_training_then_rerun_continues(prepared, tmp_path):
    _copy_run(prepared, tmp_path, "resume")
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
    assert student["epochs"] == 6 and student["rounds"] == 1
    _, _, bundle = load_student(storage, "resume", "all")
    assert len(bundle["history"]) == 6
    assert [h["epoch"] for h in bundle["history"]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
