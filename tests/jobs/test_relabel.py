"""Self-training (``train.relabel_rounds``): relabel rounds, the relabelled knowledge table,
resume, and a changed setting on a finished run (one process, no Ray, the smoke config)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cluster.config import load_config
from cluster.job import run_job
from cluster.passes.relabel import dense_units, relabel_dir
from cluster.pipeline import pretrain, train_stage
from cluster.store.storage import Storage
from cluster.training.students import load_students, student_log_probs
from distill.config import ConfigError
from distill.evidence import StudentWithUnits, combine, unit_evidence
from distill.records import table_to_shapes, table_to_units


def test_dense_units_cover_every_point_once():
    labels = np.array([2, 0, 2, 2, 0])
    units = dense_units("s", labels, num_parts=4, round=1)
    assert list(units.label) == [0, 2] and np.all(units.score == 1.0) and units.round == 1
    assert sorted(units.point_idx.tolist()) == list(range(5))
    np.testing.assert_array_equal(units.unit_points(1), [0, 2, 3])


def check_relabels(relabelled, teacher, prior, students, shapes) -> tuple[int, int]:
    """Assert each shape's written labels are combine(the students' log-probs, its teacher
    units' evidence) → (shapes checked, points that differ from the students' argmax)."""
    changed = checked = 0
    for _, s, log_probs in student_log_probs(students, shapes, 4):
        u = relabelled[s.shape_id]
        written = np.full(s.num_points, -1)
        for k in range(len(u)):
            written[u.unit_points(k)] = u.label[k]
        pos, neg = unit_evidence(teacher[s.shape_id], *log_probs.shape)
        np.testing.assert_array_equal(written, combine(log_probs, pos, neg, prior.weight, prior.negative))
        changed += int((written != log_probs.argmax(1)).sum())
        checked += 1
    return checked, changed


@pytest.fixture(scope="module")
def relabel_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    argv = ["--config", "smoke", f"storage.root={root}", "cluster.backend=local", "train.relabel_rounds=1"]
    argv += ["train.bd_rounds=0", "run=st"]
    return root, argv, run_job("pretrain", pretrain, argv)


def test_a_relabel_round_learns_from_the_relabelled_table(relabel_run):
    root, argv, summary = relabel_run
    storage = Storage.from_config(load_config(argv).storage)
    (first,) = summary["train"]["relabel_rounds"]
    assert summary["train"]["relabel"]["parts"] == 3 and summary["train"]["relabel"]["skipped_parts"] == 0
    assert first["train"]["students"][0]["knowledge"] == "st/knowledge/round_0"
    (last,) = summary["train"]["students"]
    assert last["knowledge"] == relabel_dir("st", 1)
    assert (root / "st" / "relabel" / "round_0" / "checkpoints" / "all" / "final.pt").exists()
    assert (root / "st" / "checkpoints" / "all" / "final.pt").exists()
    # The relabelled table: round 0's part names, every shape with teacher units relabelled
    # densely (each of its points in exactly one unit of score 1), no other shape.
    teacher_parts = storage.list_parts("st/knowledge/round_0")
    assert storage.list_parts(relabel_dir("st", 1)) == teacher_parts
    teacher = table_to_units(storage.read_table("st/knowledge/round_0"))
    relabelled = table_to_units(storage.read_table(relabel_dir("st", 1)))
    assert set(relabelled) == {i for i, u in teacher.items() if len(u)}
    shapes = {
        r["shape_id"]: r["num_points"] for r in storage.read_table("st/shapes", ["shape_id", "num_points"]).to_pylist()
    }
    for sid, u in relabelled.items():
        assert np.all(u.score == 1.0) and u.teacher == "relabel"
        assert sorted(u.point_idx.tolist()) == list(range(shapes[sid]))
    # The relabel pass is the evaluation's student_units on the distillation shapes: the
    # first round's labels with the shape's teacher units as evidence.
    assert StudentWithUnits.of(load_config(argv).eval).weight > 0
    assert summary["student"] >= 0.0 and "student_units" in summary


def test_the_relabels_are_the_student_combined_with_the_evidence(relabel_run):
    """Each relabelled shape's labels are combine(round 0's log-probs, its teacher
    units' evidence), and the evidence changes the student's own argmax somewhere."""
    _, argv, _ = relabel_run
    cfg = load_config(argv)
    storage = Storage.from_config(cfg.storage)
    prior = StudentWithUnits.of(cfg.eval)
    teacher = table_to_units(storage.read_table("st/knowledge/round_0"))
    relabelled = table_to_units(storage.read_table(relabel_dir("st", 1)))
    shapes = [s for s in table_to_shapes(storage.read_table("st/shapes")) if s.shape_id in relabelled]
    students = load_students(storage, "st/relabel/round_0")
    checked, changed = check_relabels(relabelled, teacher, prior, students, shapes)
    assert checked == len(relabelled) and changed > 0


def test_a_rerun_skips_every_relabel_round_and_pass(relabel_run):
    _, argv, _ = relabel_run
    cfg = load_config(argv)
    storage = Storage.from_config(cfg.storage)
    with torch.random.fork_rng():
        again = train_stage(cfg, storage)
    (first,) = again["relabel_rounds"]
    assert first["train"]["skipped"] == ["all"] and again["skipped"] == ["all"]
    assert again["relabel"]["parts"] == 0 and again["relabel"]["skipped_parts"] == 3


def test_changing_the_relabel_rounds_of_a_finished_run_is_refused(relabel_run):
    _, argv, _ = relabel_run
    cfg = load_config([*argv, "train.relabel_rounds=0"])
    with pytest.raises(ConfigError, match="relabel_rounds changed"):
        train_stage(cfg, Storage.from_config(cfg.storage))


def test_relabelling_needs_the_units_weight(tmp_path):
    argv = ["--config", "smoke", f"storage.root={tmp_path}", "train.relabel_rounds=1", "eval.units_weight=0"]
    with pytest.raises(ConfigError, match="eval.units_weight > 0"):
        load_config(argv)
    from cluster.passes.relabel import Relabeller

    with pytest.raises(ValueError, match="eval.units_weight > 0"):
        Relabeller(Storage(str(tmp_path)), "", "", "", [], StudentWithUnits(weight=0.0), 1)


def test_cross_fitted_relabels_come_from_the_student_that_held_the_shape_out(tmp_path):
    """train.relabel_folds=2: round 0 is two students, each trained without one hash
    fold of the shapes; every shape is relabelled by the student that never saw its units."""
    from cluster.passes.relabel import round_config
    from cluster.training.students import plan_students
    from cluster.training.train import part_source
    from distill.sources import fold_of

    argv = ["--config", "smoke", f"storage.root={tmp_path}", "cluster.backend=local", "train.relabel_rounds=1",
            "train.relabel_folds=2", "train.bd_rounds=0", "run=cf"]  # fmt: skip
    summary = run_job("pretrain", pretrain, argv)
    cfg = load_config(argv)
    storage = Storage.from_config(cfg.storage)
    (first,) = summary["train"]["relabel_rounds"]
    folds = first["train"]["folds"]
    assert [f["students"][0]["student"] for f in folds] == ["all-fold_0", "all-fold_1"]
    teacher = table_to_units(storage.read_table("cf/knowledge/round_0"))
    trained = {s for s, u in teacher.items() if len(u)}
    for f in (0, 1):  # each fold student learns from the other fold's shapes only
        c = round_config(cfg, 0, f)
        (plan,) = plan_students(c, storage, "cf/shapes", "cf/knowledge/round_0")
        seen = {sid for b in part_source(c, storage, plan, 0).train_batches(0, {}) for sid in b.shape_ids}
        assert seen == {s for s in trained if fold_of(s, cfg.seed, 2) != f} and seen
    relabelled = table_to_units(storage.read_table(relabel_dir("cf", 1)))
    assert set(relabelled) == trained
    shapes = [s for s in table_to_shapes(storage.read_table("cf/shapes")) if s.shape_id in relabelled]
    prior = StudentWithUnits.of(cfg.eval)
    checked = 0
    for f in (0, 1):  # every shape checked against the student of its own fold
        students = load_students(storage, f"cf/relabel/round_0-fold_{f}")
        mine = [s for s in shapes if fold_of(s.shape_id, cfg.seed, 2) == f]
        checked += check_relabels(relabelled, teacher, prior, students, mine)[0]
    assert checked == len(relabelled)
    with pytest.raises(ConfigError, match="train.fold"):
        load_config([*argv, "train.fold=2"])


def test_a_fold_without_a_category_falls_back_in_sample_and_says_so(relabel_run):
    """Cross-fitting: when every shape of a category fell in one fold, that fold's students
    never learnt it; its shapes are relabelled by another fold's student, counted."""
    from dataclasses import replace

    from cluster.passes.relabel import Relabeller
    from distill.sources import fold_of

    _, argv, _ = relabel_run
    cfg = load_config(argv)
    storage = Storage.from_config(cfg.storage)
    (student,) = load_students(storage, "st/relabel/round_0")
    blind = replace(student, trained=frozenset({"Chair"}))  # fold 0's student knows Chairs only
    relabeller = Relabeller(storage, "", "", "", [[blind], [student]], StudentWithUnits(weight=0.1), 1, seed=cfg.seed)
    shapes = table_to_shapes(storage.read_table("st/shapes"))
    got = [s.shape_id for _, s, _ in relabeller._log_probs(shapes)]
    assert sorted(got) == sorted(s.shape_id for s in shapes)  # every shape, once
    orphans = [s for s in shapes if fold_of(s.shape_id, cfg.seed, 2) == 0 and s.category != "Chair"]
    assert orphans and relabeller.in_sample == len(orphans)
