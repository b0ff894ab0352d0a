"""Backward distillation's re-scoring as a Ray Data actor-pool pass, on a real local Ray."""

import numpy as np
import pytest

from cluster.checkpoints import load_student, load_torch, save_torch
from cluster.pipeline import extract_stage
from cluster.rescore_ray import plan_items, read_round_scores, rescore_on_ray, round_part_name
from cluster.runtime import connect
from cluster.storage import Storage
from cluster.train import knowledge_dir, load_training_data, train_student
from distill.config import ClusterConfig, load_config
from distill.student import build_student
from distill.training import prepare_samples, rescore_samples

RUN = "bd"
ARGS = ["--config", "smoke", "data.per_category=3", "train.epochs=4", f"run={RUN}", "cluster.backend=local"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    connect(ClusterConfig(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture()
def pending(tmp_path):
    """A run whose student stopped after epoch 2 (smoke: bd_epoch=2), awaiting re-scoring."""
    cfg = load_config([*ARGS, f"storage.root={tmp_path}"])
    storage = Storage.from_config(cfg.storage)
    extract_stage(cfg, storage)
    (job,) = load_training_data(cfg, storage, f"{RUN}/shapes", knowledge_dir(RUN, 0))
    info = train_student(cfg, storage, job, "cpu", rescore_externally=True)
    assert info["pending_rescore"] and info["epochs"] == 2
    assert not storage.exists(f"{RUN}/checkpoints/all/final.pt")
    return cfg, storage, job


def _expected_scores(cfg, state, job):
    model = build_student(cfg.student, job.space.num_slots, job.space.num_categories)
    model.load_state_dict(state["model"])
    samples = prepare_samples(job.shapes, job.units, job.space, cfg.data.num_points, cfg.seed)
    return rescore_samples(model, samples, job.space, state["scores"])


def test_rescoring_pass_matches_in_process_and_training_resumes(pending, ray_local):
    cfg, storage, job = pending
    ckpt = f"{RUN}/checkpoints/all/last.pt"
    state = load_torch(storage, ckpt)
    expected = _expected_scores(cfg, state, job)
    out_dir = knowledge_dir(RUN, 1)
    items, done = plan_items(storage, f"{RUN}/shapes", knowledge_dir(RUN, 0), out_dir, "all", set(state["scores"]))
    assert len(items) >= 2 and not done  # several knowledge parts: several actor calls

    summary = rescore_on_ray(cfg, storage, "all", job.space, f"{RUN}/shapes", knowledge_dir(RUN, 0), ckpt, out_dir)
    assert summary["round"] == 1 and summary["parts"] == len(items) and summary["shapes"] == len(job.shapes)
    assert sorted(storage.part_names(out_dir)) == sorted(i["out_part"] for i in items)
    resumed = load_torch(storage, ckpt)
    assert not resumed["pending_rescore"] and resumed["round"] == 1 and resumed["round_start"] == 2
    for sid, s in expected.items():
        np.testing.assert_array_equal(resumed["scores"][sid], s, err_msg=sid)
    written = read_round_scores(storage, out_dir, "all")
    assert set(written) == {sid for sid, s in expected.items() if len(s)}
    with pytest.raises(ValueError, match="not waiting"):
        rescore_on_ray(cfg, storage, "all", job.space, f"{RUN}/shapes", knowledge_dir(RUN, 0), ckpt, out_dir)

    info = train_student(cfg, storage, job, "cpu", rescore_externally=True)
    assert "pending_rescore" not in info and info["epochs"] == 4 and info["rounds"] == 1
    _, _, bundle = load_student(storage, RUN, "all")
    assert [h.get("rescored", 0.0) for h in bundle["history"]] == [0, 1, 0, 0]


def test_rescoring_pass_resumes_after_a_crash(pending, ray_local):
    """A driver that died mid-pass: the parts written are kept, the rest are done."""
    cfg, storage, job = pending
    ckpt = f"{RUN}/checkpoints/all/last.pt"
    state = load_torch(storage, ckpt)
    out_dir = knowledge_dir(RUN, 1)
    rescore_on_ray(cfg, storage, "all", job.space, f"{RUN}/shapes", knowledge_dir(RUN, 0), ckpt, out_dir)
    first = read_round_scores(storage, out_dir, "all")
    parts = storage.part_names(out_dir)
    storage.delete(f"{out_dir}/{parts[0]}")  # one part lost, and last.pt still pending
    save_torch(storage, ckpt, state)

    again = rescore_on_ray(cfg, storage, "all", job.space, f"{RUN}/shapes", knowledge_dir(RUN, 0), ckpt, out_dir)
    assert again["parts"] == 1 and again["skipped_parts"] == len(parts) - 1
    assert sorted(storage.part_names(out_dir)) == sorted(parts)
    second = read_round_scores(storage, out_dir, "all")
    assert set(first) == set(second)
    for sid in first:
        np.testing.assert_array_equal(first[sid], second[sid])


def test_pending_checkpoint_is_rescored_in_process_when_run_locally(pending):
    """A Ray run stopped for re-scoring, continued with cluster.backend=local."""
    cfg, storage, job = pending
    state = load_torch(storage, f"{RUN}/checkpoints/all/last.pt")
    expected = _expected_scores(cfg, state, job)
    info = train_student(cfg, storage, job, "cpu")
    assert info["epochs"] == 4 and info["rounds"] == 1
    written = _round_1_scores(storage)
    for sid, s in written.items():
        np.testing.assert_array_equal(s, expected[sid])


def _round_1_scores(storage):
    from distill.records import UNIT_SCHEMA, table_to_units

    units = table_to_units(storage.read_table(knowledge_dir(RUN, 1), schema=UNIT_SCHEMA))
    assert units and all(u.round == 1 for u in units.values())
    return {sid: u.score for sid, u in units.items()}


def test_round_part_names():
    assert round_part_name("all", "part-0a1b.parquet") == "part-all-0a1b.parquet"
    assert round_part_name("Chair", "x.parquet") == "part-Chair-x.parquet"
