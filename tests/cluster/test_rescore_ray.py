"""Backward distillation's re-scoring pass as a Ray Data actor pool (real local Ray) and in
process, over the student's shape parts: round k ≥ 1 stores scores only."""

import numpy as np
import pytest

from cluster.passes.rescore import load_snapshot, rescore_pass, todo_items
from cluster.training.checkpoints import load_student, load_torch
from cluster.training.samples import BALANCE_FILE, load_item, load_units, read_score_part, read_scores, scores_dir
from cluster.training.train import train_student_local
from distill.backward import rescore_samples
from distill.records import SCORE_SCHEMA, table_to_units
from tests.backends import on_ray
from tests.cluster.bd_run import CKPT, CKPT_DIR, CPU, RUN, fit, pending_run, prepare


@pytest.fixture()
def pending(tmp_path, bd_extracted):
    """A run whose student stopped after epoch 2 (smoke: bd_epoch=2), awaiting re-scoring."""
    cfg, storage, plan = pending_run(tmp_path, bd_extracted)
    assert not storage.exists(f"{RUN}/checkpoints/all/final.pt")
    storage.reads.reset()
    return cfg, storage, plan


def _expected_scores(cfg, storage, plan):
    """The pass done by hand on the same snapshot: per item, its samples prepared as
    training does and ``rescore_samples`` → {knowledge part: {shape id: scores}}."""
    model, _ = load_snapshot(cfg, storage, CKPT, plan.space, CPU)
    out = {}
    for item in plan.items:
        samples = load_item(storage, plan.tables(0), item, plan.space, cfg.data.num_points, cfg.seed)
        new = rescore_samples(model, [s for s in samples if s.num_units], plan.space, None, CPU, cfg.train.batch_size)
        for part in item.knowledge_parts:
            ids = set(storage.read_part(plan.units_dir, part, ["shape_id"]).column(0).to_pylist())
            out[part] = {sid: s for sid, s in new.items() if sid in ids}
    return out


def _assert_scores_only(storage, plan, round, expected):
    """Round ``round``'s folder: one score part per knowledge part, same name, rows of
    (shape_id, score) only, one score per round-0 unit, equal to ``expected``."""
    out_dir = plan.tables(round).scores_dir
    assert out_dir == scores_dir(plan.units_dir, "all", round) == f"{RUN}/knowledge/round_{round}/all"
    assert storage.list_parts(out_dir) == sorted(k for i in plan.items for k in i.knowledge_parts)
    for part in storage.list_parts(out_dir):
        table = storage.read_part(out_dir, part)
        assert table.schema.equals(SCORE_SCHEMA), table.schema
        units = table_to_units(storage.read_part(plan.units_dir, part))
        written = read_scores(storage, out_dir, part)
        assert set(written) == set(expected[part]) == {sid for sid, u in units.items() if len(u)}
        for sid, s in written.items():
            assert s.dtype == np.float32 and len(s) == len(units[sid])
            np.testing.assert_array_equal(s, expected[part][sid], err_msg=f"{part}:{sid}")
        done, summary = storage.part_footer(out_dir, part)
        assert sorted(done) == sorted(written) and summary["round"] == round


def test_todo_items_and_scores_dir(pending):
    _, storage, plan = pending
    out_dir = plan.tables(1).scores_dir
    assert plan.tables(0).scores_dir == "" and out_dir.endswith("round_1/all")
    with pytest.raises(ValueError, match="round=0"):
        scores_dir(plan.units_dir, "all", 0)
    assert todo_items(storage, plan.items, out_dir) == plan.items and len(plan.items) == 6
    first = plan.items[0]
    storage.write_part(out_dir, SCORE_SCHEMA.empty_table(), done_ids=[], name=first.knowledge_parts[0])
    assert todo_items(storage, plan.items, out_dir) == plan.items[1:]


def test_rescoring_pass_matches_in_process_and_training_resumes(pending, ray_local):
    cfg, storage, plan = pending
    expected = _expected_scores(cfg, storage, plan)
    storage.reads.reset()

    summary = prepare(storage, plan, lambda snap: rescore_pass(on_ray(cfg), storage, plan, snap))
    assert storage.reads.rows == {}  # the actors read the parts; the driver none
    assert summary["round"] == 1 and summary["parts"] == len(plan.items) and summary["skipped_parts"] == 0
    assert summary["shapes"] == sum(len(v) for v in expected.values()) == plan.with_units
    assert summary["units"] == sum(len(s) for v in expected.values() for s in v.values())
    _assert_scores_only(storage, plan, 1, expected)
    resumed = load_torch(storage, CKPT)
    assert not resumed["pending_rescore"] and resumed["round"] == 1 and resumed["round_start"] == 2
    assert resumed["scores"] == {}  # a streaming run's scores live in the round's table
    with pytest.raises(ValueError, match="not waiting"):
        rescore_pass(on_ray(cfg), storage, plan, CKPT)

    # The next fit reads round 1: round-0 units with the new scores.
    item = plan.items[0]
    units, _ = load_units(storage, plan.tables(1), item)
    for sid, s in expected[item.knowledge_parts[0]].items():
        assert units[sid].round == 1
        np.testing.assert_array_equal(units[sid].score, s)

    outcome = fit(cfg, storage, plan)
    assert not outcome.rescore_due and outcome.info["epochs"] == 4 and outcome.info["rounds"] == 1
    _, _, bundle = load_student(storage, RUN, "all")
    assert [h.get("rescored", 0.0) for h in bundle["history"]] == [0, 1, 0, 0]


def test_rescoring_pass_resumes_after_a_crash(pending, ray_local):
    """A driver that died mid-pass: the parts written are kept, the rest are done."""
    cfg, storage, plan = pending
    out_dir = plan.tables(1).scores_dir
    rescore_pass(on_ray(cfg), storage, plan, CKPT)
    assert load_torch(storage, CKPT)["pending_rescore"]  # the pass alone does not move last.pt on
    parts = storage.list_parts(out_dir)
    first = {p: read_scores(storage, out_dir, p) for p in parts}
    storage.delete(f"{out_dir}/{parts[2]}")  # one part lost, and last.pt still pending

    again = prepare(storage, plan, lambda snap: rescore_pass(on_ray(cfg), storage, plan, snap))
    assert again["parts"] == 1 and again["skipped_parts"] == len(plan.items) - 1
    assert again["shapes"] == len(first[parts[2]])
    assert storage.list_parts(out_dir) == parts
    for p in parts:
        second = read_scores(storage, out_dir, p)
        assert second.keys() == first[p].keys()
        for sid in second:
            np.testing.assert_array_equal(second[sid], first[p][sid])
    assert load_torch(storage, CKPT)["round"] == 1

    # A score part lost after last.pt moved on: rebuilt from the kept round_1.pt snapshot.
    storage.delete(f"{out_dir}/{parts[0]}")
    rebuilt = prepare(storage, plan, lambda snap: rescore_pass(on_ray(cfg), storage, plan, snap))
    assert rebuilt["parts"] == 1 and storage.list_parts(out_dir) == parts
    for sid, sc in read_scores(storage, out_dir, parts[0]).items():
        np.testing.assert_array_equal(sc, first[parts[0]][sid])
    assert load_torch(storage, CKPT)["round"] == 1
    assert prepare(storage, plan, lambda snap: rescore_pass(on_ray(cfg), storage, plan, snap)) is None

    # ... and without its snapshot, an error that names the way out.
    storage.delete(f"{out_dir}/{parts[0]}")
    storage.delete(f"{CKPT_DIR}/round_1.pt")
    with pytest.raises(FileNotFoundError, match="train all afresh"):
        prepare(storage, plan, lambda snap: rescore_pass(on_ray(cfg), storage, plan, snap))


def test_pending_checkpoint_is_rescored_in_process_when_run_locally(pending):
    """A Ray run stopped for re-scoring, continued with cluster.backend=local."""
    cfg, storage, plan = pending
    expected = _expected_scores(cfg, storage, plan)
    info = train_student_local(cfg, storage, plan, CPU)
    assert info["epochs"] == 4 and info["rounds"] == 1
    (rescoring,) = info["rescoring"]
    assert rescoring["round"] == 1 and rescoring["parts"] == len(plan.items)
    _assert_scores_only(storage, plan, 1, expected)
    assert storage.exists(f"{RUN}/checkpoints/all/final.pt")


def test_rescore_here_matches_the_hand_made_pass_scores(pending):
    """``rescore_pass`` in this process on the snapshot writes what the hand-made pass computes (and so
    what the Ray pass writes, see above); ``last.pt`` stays pending for ``prepare_fit``."""
    cfg, storage, plan = pending
    expected = _expected_scores(cfg, storage, plan)
    summary = rescore_pass(cfg, storage, plan, CKPT)
    assert summary["round"] == 1 and summary["parts"] == len(plan.items)
    assert summary["shapes"] == plan.with_units
    _assert_scores_only(storage, plan, 1, expected)
    assert load_torch(storage, CKPT)["pending_rescore"]  # prepare_fit moves it on


def test_a_point_balanced_pass_on_ray_writes_what_the_local_pass_writes(tmp_path, bd_extracted, ray_local):
    """train.rescore=point_balanced: the actors write the same scores, pair weights and
    part masses as the pass in this process, and the driver the same factor table."""
    written = {}
    for where in ("ray", "local"):
        cfg, storage, plan = pending_run(tmp_path / where, bd_extracted, "train.rescore=point_balanced")

        def pass_(snap, cfg=cfg, storage=storage, plan=plan, where=where):
            if where == "ray":
                return rescore_pass(on_ray(cfg), storage, plan, snap)
            return rescore_pass(cfg, storage, plan, snap)

        prepare(storage, plan, pass_)
        out_dir = plan.tables(1).scores_dir
        parts = {p: read_score_part(storage, out_dir, p) for p in storage.list_parts(out_dir)}
        written[where] = (parts, storage.read_json(f"{out_dir}/{BALANCE_FILE}"))
    (ray_parts, ray_balance), (local_parts, local_balance) = written["ray"], written["local"]
    assert ray_balance == local_balance and ray_balance["rule"] == "point_balanced"
    assert ray_parts.keys() == local_parts.keys()
    for p, (scores, pairs) in ray_parts.items():
        assert pairs.keys() == scores.keys()  # a point rule: every shape has pair weights
        for sid in scores:
            np.testing.assert_allclose(scores[sid], local_parts[p][0][sid], rtol=1e-6)
            np.testing.assert_allclose(pairs[sid], local_parts[p][1][sid], rtol=1e-6)
