"""The training loop: samples and batches, a smoke run that learns, resume, selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.backward import apply_rescore, rescore_samples
from distill.config import StudentConfig, TrainConfig
from distill.labels import LabelSpace, group_for_students
from distill.losses import distillation_loss
from distill.passes import evaluate, make_optimizer, predict
from distill.records import KnowledgeUnits, Shape
from distill.samples import collate, epoch_batches, prepare_sample, prepare_samples, resample_units, split_validation
from distill.student import build_student
from distill.training import distil

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ---------------------------------------------------------------- synthetic shapes


def _box_surface(rng: np.random.Generator, center, size, n: int) -> np.ndarray:
    """n points uniform on the surface of an axis-aligned box."""
    size = np.asarray(size, float)
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]]).repeat(2)
    face = rng.choice(6, n, p=areas / areas.sum())
    u = rng.uniform(-0.5, 0.5, (n, 3)) * size
    axis = face // 2
    u[np.arange(n), axis] = np.where(face % 2 == 0, -0.5, 0.5) * size[axis]
    return u + np.asarray(center, float)


def make_shape(rng: np.random.Generator, sid: str, category: str = "stack", n: int = 128) -> Shape:
    """A part-labelled shape made of boxes: 'stack' = base, column, top; 'tee' = bar, post."""
    if category == "stack":
        boxes = [([0, 0, -0.5], [0.8, 0.8, 0.15]), ([0, 0, 0], [0.15, 0.15, 0.8]), ([0, 0, 0.5], [0.5, 0.9, 0.1])]
        names, weights = ["base", "column", "top"], [0.4, 0.25, 0.35]
    else:
        boxes = [([0, 0, 0.5], [1.0, 0.2, 0.2]), ([0, 0, -0.1], [0.2, 0.2, 1.0])]
        names, weights = ["bar", "post"], [0.5, 0.5]
    counts = rng.multinomial(n, weights)
    pts = np.concatenate(
        [_box_surface(rng, c, np.asarray(s) * rng.uniform(0.8, 1.2, 3), k) for (c, s), k in zip(boxes, counts)]
    )
    labels = np.repeat(np.arange(len(boxes)), counts)
    pts -= pts.mean(0)
    pts /= np.linalg.norm(pts, axis=1).max()
    perm = rng.permutation(n)
    return Shape(sid, category, names, pts[perm].astype(np.float32), labels=labels[perm])


def make_units(rng: np.random.Generator, shape: Shape, views: int = 4, score: float = 0.9) -> KnowledgeUnits:
    """Units from ground truth: per view and part, a random spatial chunk of the part."""
    labels, sets = [], []
    for _ in range(views):
        for p in range(shape.num_parts):
            idx = np.flatnonzero(shape.labels == p)
            d = rng.normal(size=3)
            proj = shape.points[idx] @ d
            sets.append(idx[proj > np.quantile(proj, rng.uniform(0.0, 0.5))])
            labels.append(p)
    return KnowledgeUnits.from_lists(shape.shape_id, list(range(len(labels))), labels, [score] * len(labels), sets)


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    shapes = [make_shape(rng, f"stack{i}") for i in range(6)]
    units = {s.shape_id: make_units(rng, s) for s in shapes}
    return shapes, units


TINY = StudentConfig(backbone="dgcnn_static", width=16, k=8, dropout=0.0)


def _model(space: LabelSpace, seed: int = 0, cfg: StudentConfig = TINY) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_student(cfg, space.num_slots, space.num_categories)


# ---------------------------------------------------------------- label space, samples, batches


def test_label_space():
    rng = np.random.default_rng(1)
    shapes = [make_shape(rng, "a", "tee"), make_shape(rng, "b", "stack")]
    space = LabelSpace.from_shapes(shapes)
    assert space.categories == ("stack", "tee") and space.num_slots == 5
    assert space.offsets.tolist() == [0, 3, 5]
    assert space.slot_group().tolist() == [0, 0, 0, 1, 1]
    assert space.allowed().tolist() == [[True] * 3 + [False] * 2, [False] * 3 + [True] * 2]
    assert LabelSpace.from_dict(space.to_dict()) == space
    bad = make_shape(rng, "c", "tee")
    bad.part_names = ["x", "y"]
    with pytest.raises(ValueError, match="part names"):
        LabelSpace.from_shapes(shapes + [bad])
    assert [len(g) for g in group_for_students(shapes + shapes, per_category=True)] == [2, 2]
    assert [len(g) for g in group_for_students(shapes, per_category=False)] == [2]


def test_prepare_sample_maps_labels_to_slots():
    rng = np.random.default_rng(2)
    shapes = [make_shape(rng, "a", "stack"), make_shape(rng, "b", "tee")]
    space = LabelSpace.from_shapes(shapes)
    u = make_units(rng, shapes[1])
    s = prepare_sample(shapes[1], u, space)
    assert s.category == 1
    np.testing.assert_array_equal(s.unit_slot.numpy(), u.label + 3)
    with pytest.raises(ValueError, match="units of 'b'"):
        prepare_sample(shapes[0], u, space)


def test_resample_units_matches_brute_force():
    rng = np.random.default_rng(3)
    n = 50
    sets = [rng.choice(n, rng.integers(0, 20), replace=False) for _ in range(8)]
    u = KnowledgeUnits.from_lists("s", [0] * 8, [0] * 8, [1.0] * 8, sets)
    choice = rng.integers(0, n, 70)  # with repeats and drops
    idx, off = resample_units(u.point_idx, u.offsets, choice)
    for k in range(8):
        want = sorted(p for p in range(len(choice)) if choice[p] in set(sets[k].tolist()))
        assert sorted(idx[off[k] : off[k + 1]].tolist()) == want


def test_prepare_sample_resamples_points(corpus):
    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    for m in (100, 300):
        s = prepare_sample(shapes[0], units["stack0"], space, num_points=m)
        assert s.points.shape == (m, 3) and s.labels.shape == (m,)
        # Every covered point still carries the label of the part its unit came from.
        unit_of_pair = np.repeat(np.arange(s.num_units), np.diff(s.unit_offsets.numpy()))
        np.testing.assert_array_equal(s.labels.numpy()[s.point_idx.numpy()], s.unit_slot.numpy()[unit_of_pair])


def test_collate_shifts_point_indices(corpus):
    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes[:3], units, space)
    batch = collate(samples)
    n = samples[0].num_points
    assert batch.points.shape == (3, n, 3)
    assert batch.unit_offsets[-1] == len(batch.point_idx) == sum(len(s.point_idx) for s in samples)
    # The loss over the collated batch, with one class weight vector, is the mean of the
    # per-sample losses computed with that same vector.
    logits = torch.randn(3, n, 3, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([1.0, 2.0, 1.5])
    whole = distillation_loss(logits, batch.point_idx, batch.unit_offsets, batch.unit_slot, batch.unit_score, w)
    parts = [
        distillation_loss(logits[i], s.point_idx, s.unit_offsets, s.unit_slot, s.unit_score, w)
        for i, s in enumerate(samples)
    ]
    assert whole.item() == pytest.approx(float(np.mean([p.item() for p in parts])), rel=1e-5)
    with pytest.raises(ValueError, match="different point counts"):
        collate([samples[0], prepare_sample(shapes[1], None, space, num_points=100)])


def test_epoch_batches_shard_and_reshuffle(corpus):
    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes[:5], units, space)
    per_rank = [epoch_batches(samples, 2, seed=0, epoch=3, rank=r, world_size=2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])  # equal steps on every worker (DDP)
    seen = [sid for batches in per_rank for b in batches for sid in b.shape_ids]
    assert len(seen) == 6 and set(seen) == {s.shape_id for s in samples}  # 5 padded to 6
    order = lambda e: [sid for b in epoch_batches(samples, 5, 0, e) for sid in b.shape_ids]  # noqa: E731
    assert order(1) == order(1) and order(1) != order(2)


def test_split_validation_is_per_category_and_order_free(corpus):
    shapes, units = corpus
    rng = np.random.default_rng(4)
    more = shapes + [make_shape(rng, f"tee{i}", "tee") for i in range(3)] + [make_shape(rng, "lone", "tee2")]
    space = LabelSpace.from_shapes(more)
    samples = prepare_samples(more, units, space)
    train, val = split_validation(samples, 0.2, seed=0)
    val_ids = {samples[i].shape_id for i in val}
    assert sum(i.startswith("stack") for i in val_ids) == 1 and sum(i.startswith("tee") for i in val_ids) == 1
    assert "lone" not in val_ids and sorted(train + val) == list(range(len(samples)))
    rev = samples[::-1]
    assert {rev[i].shape_id for i in split_validation(rev, 0.2, seed=0)[1]} == val_ids


# ---------------------------------------------------------------- the loop


@pytest.mark.parametrize("weights", ["batch", "corpus"])
def test_smoke_training_learns(corpus, weights):
    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, units, space)
    model = _model(space)
    before = evaluate(model, shapes, "cpu").shape_mean()
    cfg = TrainConfig(epochs=12, batch_size=3, bd_rounds=0, class_weights=weights)  # 48 steps
    result = distil(model, samples, space, cfg, seed=0)
    losses = [h["loss"] for h in result.history]
    after = evaluate(result.model, shapes, "cpu")
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2])
    assert after.shape_mean() > 75.0 and after.shape_mean() > before + 30.0  # chance ≈ 33
    assert result.selected_epoch == 12


def test_backward_distillation_round(corpus):
    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, units, space)
    calls = []
    cfg = TrainConfig(epochs=6, batch_size=3, bd_rounds=1, bd_trigger="epoch", bd_epoch=4, rescore="agreement")
    result = distil(_model(space), samples, space, cfg, seed=0, on_rescore=lambda r, u: calls.append((r, u)))
    assert [r for r, _ in calls] == [1]
    rescored = calls[0][1]
    assert set(rescored) == {s.shape_id for s in shapes}
    u = rescored["stack0"]
    assert u.round == 1 and len(u) == len(units["stack0"]) and u.teacher == units["stack0"].teacher
    assert not np.allclose(u.score, 0.9) and ((u.score >= 0) & (u.score <= 1)).all()
    # The units were made from ground truth, so a student that learned agrees with most.
    assert u.score.mean() > 0.6
    assert [h.get("rescored", 0.0) for h in result.history] == [0, 0, 0, 1, 0, 0]
    np.testing.assert_array_equal(result.units["stack0"].score, u.score)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_replays_the_uninterrupted_run(corpus, ema):
    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, units, space)
    student = StudentConfig(backbone="pointnet2", width=4, k=4, dropout=0.3)  # dropout: RNG streams matter
    cfg = TrainConfig(epochs=5, batch_size=4, bd_rounds=1, bd_trigger="epoch", bd_epoch=2, rescore="agreement", ema=ema)

    full = distil(_model(space, 0, student), samples, space, cfg, seed=3)

    saved = {}

    def stop_after_3(state):
        if state.epoch == 3:
            saved["state"] = state.state_dict()
            return True
        return None

    distil(_model(space, 0, student), samples, space, cfg, seed=3, on_epoch_end=stop_after_3)
    assert saved["state"]["round"] == 1  # the re-scoring (after epoch 2) is inside the checkpoint
    resumed = distil(_model(space, 99, student), samples, space, cfg, seed=3, resume=saved["state"])

    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    np.testing.assert_array_equal(full.units["stack1"].score, resumed.units["stack1"].score)
    with pytest.raises(ValueError, match="seed"):
        distil(_model(space, 0, student), samples, space, cfg, seed=4, resume=saved["state"])
    if ema:  # the final model is the average, not the last iterate
        last = saved["state"]["model"]
        assert any(not torch.equal(v, full.model.state_dict()[k]) for k, v in last.items() if v.is_floating_point())


def test_training_never_reads_labels(corpus):
    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    blind = [Shape(s.shape_id, s.category, s.part_names, s.points) for s in shapes]
    cfg = TrainConfig(epochs=2, batch_size=3, select="val", bd_rounds=0)
    a = distil(_model(space), prepare_samples(shapes, units, space), space, cfg, seed=0)
    b = distil(_model(space), prepare_samples(blind, units, space), space, cfg, seed=0)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert a.selected_epoch == b.selected_epoch in (1, 2)
    assert all("val_agreement" in h for h in a.history)


def test_multi_category_student(corpus):
    shapes, units = corpus
    rng = np.random.default_rng(5)
    tees = [make_shape(rng, f"tee{i}", "tee") for i in range(4)]
    units = dict(units) | {s.shape_id: make_units(rng, s) for s in tees}
    mixed = shapes + tees
    space = LabelSpace.from_shapes(mixed)
    samples = prepare_samples(mixed, units, space)
    cfg = TrainConfig(epochs=8, batch_size=5, bd_rounds=0)
    result = distil(_model(space), samples, space, cfg, seed=0)
    preds = predict(result.model, mixed, "cpu", space=space)
    for s, p in zip(mixed, preds):
        assert p.min() >= 0 and p.max() < s.num_parts  # masked to the category's own parts
    table = evaluate(result.model, mixed, "cpu", space=space)
    assert set(table.per_category()) == {"stack", "tee"}
    assert table.category_mean() > 70.0
    with pytest.raises(ValueError, match="LabelSpace"):
        predict(result.model, mixed, "cpu")


def test_external_rescoring_matches_the_in_loop_one(corpus):
    """Stop for re-scoring, re-score a rebuilt snapshot elsewhere, resume: the same run."""
    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, units, space)
    cfg = TrainConfig(epochs=4, batch_size=3, bd_rounds=1, bd_trigger="epoch", bd_epoch=2, rescore="agreement")
    in_loop = distil(_model(space), samples, space, cfg, seed=1)

    saved = {}
    stopped = distil(
        _model(space),
        samples,
        space,
        cfg,
        seed=1,
        rescore_externally=True,
        on_epoch_end=lambda st: saved.update(state=st.state_dict()),
    )
    assert stopped.pending_rescore and stopped.selected_epoch == 2
    state = saved["state"]
    assert state["pending_rescore"] and state["epoch"] == 2 and state["round"] == 0
    with pytest.raises(ValueError, match="awaits backward distillation"):
        distil(_model(space), samples, space, cfg, seed=1, resume=state)

    snapshot = _model(space, seed=7)
    snapshot.load_state_dict(state["model"])  # as an actor loads it from last.pt
    scores = rescore_samples(snapshot, samples, space, state["scores"])
    resumed_state = apply_rescore(state, scores)
    assert resumed_state["round"] == 1 and not resumed_state["pending_rescore"]
    assert resumed_state["history"][-1]["rescored"] == 1.0 and "rescored" not in state["history"][-1]
    resumed = distil(_model(space, seed=9), samples, space, cfg, seed=1, resume=resumed_state)

    for (k, a), b in zip(in_loop.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    for sid in units:
        np.testing.assert_array_equal(in_loop.units[sid].score, resumed.units[sid].score)
    with pytest.raises(ValueError, match="not waiting"):
        apply_rescore(resumed_state, scores)
    with pytest.raises(ValueError, match="missing"):
        apply_rescore(state, {k: v for k, v in scores.items() if k != "stack0"})
    with pytest.raises(ValueError, match="new scores"):
        apply_rescore(state, {**scores, "stack0": scores["stack0"][:-1]})


@pytest.mark.parametrize("rule", ["point", "agreement_balanced", "point_balanced"])
def test_rescoring_rules_in_the_loop(corpus, rule):
    """train.rescore rules: the in-loop re-scoring equals the rule run by hand on the same
    snapshot, and point rules' pair weights reach the state (and so the loss and checkpoints)."""
    from distill.backward import rescore_with_rule
    from distill.rescore import balance_part_mass

    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, units, space)
    cfg = TrainConfig(epochs=3, batch_size=3, bd_rounds=1, bd_trigger="epoch", bd_epoch=2, rescore=rule)
    calls, kept = [], {}

    def keep(st):
        if st.epoch == 2:
            kept["state"] = st.state_dict()

    result = distil(
        _model(space), samples, space, cfg, seed=0, on_rescore=lambda r, u: calls.append(u), on_epoch_end=keep
    )
    assert len(calls) == 1
    snap = _model(space)
    snap.load_state_dict(kept["state"]["model"])
    scores, pairs = rescore_with_rule(rule.removesuffix("_balanced"), [snap], samples, space)
    if rule.endswith("_balanced"):
        ids = [s.shape_id for s in samples]
        slots, sizes = [s.unit_slot.numpy() for s in samples], [np.diff(s.unit_offsets.numpy()) for s in samples]
        old = [s.unit_score.numpy() for s in samples]
        scores = dict(zip(ids, balance_part_mass(slots, sizes, old, [scores[i] for i in ids])))
    for s in samples:
        np.testing.assert_allclose(calls[0][s.shape_id].score, scores[s.shape_id], rtol=1e-5, atol=1e-6)
    state = result.state
    if rule.startswith("point"):
        assert set(state["pair_weights"]) == {s.shape_id for s in samples}
        for s in samples:
            assert state["pair_weights"][s.shape_id].shape == (len(s.point_idx),)
            np.testing.assert_allclose(state["pair_weights"][s.shape_id], pairs[s.shape_id], rtol=1e-5, atol=1e-6)
    else:
        assert pairs is None and state["pair_weights"] == {}


def test_crossfit_folds_drop_units(corpus):
    from distill.crossfit import drop_fold, unit_folds

    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, units, space)
    folds = unit_folds(samples, space, 2, "view", 0)
    s = samples[0]
    kept = drop_fold(s, folds[s.shape_id], 0)
    keep = folds[s.shape_id] != 0
    assert kept.num_units == int(keep.sum()) and len(kept.units) == kept.num_units
    for j, k in enumerate(np.flatnonzero(keep)):
        a = kept.point_idx[kept.unit_offsets[j] : kept.unit_offsets[j + 1]]
        b = s.point_idx[s.unit_offsets[k] : s.unit_offsets[k + 1]]
        torch.testing.assert_close(a, b)
        assert int(kept.unit_slot[j]) == int(s.unit_slot[k])


def test_crossfit_snapshots_score_each_unit_from_its_fold(corpus):
    """The benchmark's cross-fitted rule: K snapshots trained on the other folds' units,
    each unit scored by its own fold's snapshot."""
    from distill.backward import predict_probs, rescore_with_rule, units_of
    from distill.crossfit import train_fold_snapshots, unit_folds
    from distill.rescore import rescore_rule

    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, units, space)
    cfg = TrainConfig(epochs=3, batch_size=3)
    folds = unit_folds(samples, space, 2, "view", 0)
    snaps = train_fold_snapshots(_model(space), samples, space, cfg, 2, "cpu", 0, folds, 2, "view")
    assert len(snaps) == 2
    a, b = (next(iter(m.state_dict().values())) for m in snaps)
    assert not torch.equal(a, b)  # trained on different units (and initialised apart)
    scores, pairs = rescore_with_rule("crossfit", snaps, samples, space, folds)
    probs = [predict_probs(m, samples, "cpu", space) for m in snaps]
    for i, s in enumerate(samples):
        want, _ = rescore_rule("crossfit", units_of(s, space), [p[i] for p in probs], folds[s.shape_id])
        np.testing.assert_allclose(scores[s.shape_id], want, rtol=1e-6)
    assert pairs is None


def test_min_steps_sets_the_epochs_and_warmup_ramps_the_rate(corpus):
    shapes, units = corpus
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, units, space)
    cfg = TrainConfig(epochs=2, batch_size=3, min_steps=9, warmup_steps=4, lr=1e-3, lr_min=1e-5)
    assert cfg.with_steps(2).epochs == 5 and cfg.with_steps(2).with_steps(2) == cfg.with_steps(2)
    assert cfg.with_steps(10).epochs == 2  # epochs stay a floor
    result = distil(_model(space), samples, space, cfg, seed=0)  # 6 shapes: 2 steps an epoch
    assert len(result.history) == 5
    model = _model(space)
    opt, sched = make_optimizer(model, cfg.with_steps(2), 2)  # 10 steps: 4 of warm-up, then cosine
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert rates[4] == pytest.approx(1e-3) and all(a > b for a, b in zip(rates[4:], rates[5:]))
    assert rates[-1] > 1e-5
