"""The predictions tables: evaluation and segmentation write one schema (no Ray, an untrained tiny student)."""

from __future__ import annotations

import numpy as np
import torch

from cluster.config import load_config
from cluster.passes.evaluate import PartEvaluator
from cluster.passes.segment import segment
from cluster.store.layout import PartItem, knowledge_part_name, shape_summary
from cluster.store.storage import Storage
from cluster.training.checkpoints import checkpoint_dir, final_bundle, save_torch
from cluster.training.samples import Tables
from cluster.training.students import load_students
from distill.config import StudentConfig
from distill.labels import LabelSpace
from distill.records import PREDICTION_SCHEMA, shapes_to_table, table_to_predictions, units_to_table
from distill.student import build_student
from generation.procedural import make_shape

RUN = "r"
SHAPES = f"{RUN}/shapes"


def test_evaluate_and_segment_write_one_prediction_schema(tmp_path):
    cfg = load_config(
        [f"storage.root={tmp_path}", f"run={RUN}", "data.source=table", f"data.path={SHAPES}", "progress=false"]
        + ["segment.pictures=0"]
    )
    storage = Storage.from_config(cfg.storage)
    shapes = [make_shape("chair", i, 0, 256) for i in range(2)]
    part = storage.write_part(
        SHAPES, shapes_to_table(shapes), done_ids=[s.shape_id for s in shapes], summary=shape_summary(shapes)
    )
    space = LabelSpace.from_shapes(shapes)
    student_cfg = StudentConfig(backbone="pointnet", width=8)
    torch.manual_seed(0)
    model = build_student(student_cfg, space.num_slots, space.num_categories)
    save_torch(storage, f"{checkpoint_dir(RUN, 'all')}/final.pt", final_bundle(model, space, student_cfg))

    tables = Tables(SHAPES, f"{RUN}/knowledge/round_0")
    PartEvaluator(storage, tables, load_students(storage, RUN), f"{RUN}/predictions")(PartItem(part, ()))
    assert segment(cfg, storage)["segmented"] == 2

    evaluated = storage.read_table(f"{RUN}/predictions")
    segmented = storage.read_table(f"{RUN}/segment/labels")
    for table in (evaluated, segmented):
        assert table.schema.remove_metadata().equals(PREDICTION_SCHEMA)
    a, b = table_to_predictions(evaluated), table_to_predictions(segmented)
    assert [(p.shape_id, p.student) for p in a] == [(p.shape_id, p.student) for p in b]
    assert {p.student for p in a} == {f"{RUN}/all"}
    assert all(np.array_equal(p.labels, q.labels) for p, q in zip(a, b))
    # Segmentation keeps the points (its labels stand alone); evaluation's are in the shape table.
    assert all(p.points is None for p in a)
    assert all(np.array_equal(q.points, s.points) for q, s in zip(b, shapes))


def test_an_untrained_category_is_reported_not_scored(tmp_path):
    """A student whose plan had no knowledge unit for a category does not segment it:
    evaluation leaves its cell empty (never a chance-level score) and segmentation rejects
    its shapes with the reason."""
    from cluster.passes.evaluate import evaluate_run
    from cluster.store.rejects import read_rejects

    cfg = load_config(
        [f"storage.root={tmp_path}", f"run={RUN}", "data.source=table", f"data.path={SHAPES}", "progress=false"]
        + ["segment.pictures=0"]
    )
    storage = Storage.from_config(cfg.storage)
    shapes = [make_shape(c, i, 0, 256) for c in ("chair", "lamp") for i in range(2)]
    done = [s.shape_id for s in shapes]
    part = storage.write_part(SHAPES, shapes_to_table(shapes), done_ids=done, summary=shape_summary(shapes))
    units = f"{RUN}/knowledge/round_0"
    storage.write_part(units, units_to_table([]), done, knowledge_part_name(part, done), {"shape_part": part})
    space = LabelSpace.from_shapes(shapes)
    student_cfg = StudentConfig(backbone="pointnet", width=8)
    torch.manual_seed(0)
    model = build_student(student_cfg, space.num_slots, space.num_categories)
    bundle = final_bundle(model, space, student_cfg, untrained_categories=["Lamp"])
    save_torch(storage, f"{checkpoint_dir(RUN, 'all')}/final.pt", bundle)
    (loaded,) = load_students(storage, RUN)
    assert loaded.trained == {"Chair"}
    out = evaluate_run(cfg, storage, SHAPES, units)
    assert set(out["per_category"]["student"]) == {"Chair"}
    assert out["unsegmented_categories"] == ["Lamp"] and "untrained for Lamp" in out["table"]
    assert segment(cfg, storage)["segmented"] == 2
    assert {r["item"] for r in read_rejects(storage, RUN, "segment")} == {s.shape_id for s in shapes[2:]}


def test_the_student_with_the_units_is_scored_and_written_beside_the_student(tmp_path):
    """Where a part has knowledge units, evaluation also scores the student combined with
    each shape's units (``student_units``) and writes those labels as ``<student>+units``;
    a shape of the part without units keeps the student's labels; weight 0 turns it off."""
    from distill.evidence import StudentWithUnits, combine, unit_evidence
    from distill.passes import predict_log_probs
    from distill.records import KnowledgeUnits

    storage = Storage.from_config(load_config([f"storage.root={tmp_path}"]).storage)
    shapes = [make_shape("chair", i, 0, 256) for i in range(2)]
    done = [s.shape_id for s in shapes]
    part = storage.write_part(SHAPES, shapes_to_table(shapes), done_ids=done, summary=shape_summary(shapes))
    truth = shapes[0].labels  # units that tell the truth about shape 0 from two views; none for shape 1
    sets = [np.nonzero(truth == c)[0] for c in range(shapes[0].num_parts)]
    labels = [c for c, ids in enumerate(sets) if len(ids)]
    units = KnowledgeUnits.from_lists(
        done[0],
        [0] * len(labels) + [1] * len(labels),
        labels * 2,
        [0.9] * 2 * len(labels),
        [sets[c] for c in labels] * 2,
    )
    knowledge = f"{RUN}/knowledge/round_0"
    storage.write_part(knowledge, units_to_table([units]), done, knowledge_part_name(part, done), {"shape_part": part})
    space = LabelSpace.from_shapes(shapes)
    student_cfg = StudentConfig(backbone="pointnet", width=8)
    torch.manual_seed(0)
    model = build_student(student_cfg, space.num_slots, space.num_categories)
    save_torch(storage, f"{checkpoint_dir(RUN, 'all')}/final.pt", final_bundle(model, space, student_cfg))
    students = load_students(storage, RUN)
    item = PartItem(part, (knowledge_part_name(part, done),))

    prior = StudentWithUnits(weight=0.5, negative=1.0)
    sums, _, _ = PartEvaluator(storage, Tables(SHAPES, knowledge), students, f"{RUN}/predictions", 8, prior)(item)
    rows = {(p.shape_id, p.student): p.labels for p in table_to_predictions(storage.read_table(f"{RUN}/predictions"))}
    assert set(rows) == {(i, f"{RUN}/all{suffix}") for i in done for suffix in ("", "+units")}
    log_probs = predict_log_probs(students[0].model, shapes, "cpu", 8, space)
    expected = combine(log_probs[0], *unit_evidence(units, 256, shapes[0].num_parts), 0.5, 1.0)
    np.testing.assert_array_equal(rows[(done[0], f"{RUN}/all+units")], expected)
    np.testing.assert_array_equal(rows[(done[1], f"{RUN}/all+units")], rows[(done[1], f"{RUN}/all")])
    # Truthful units from two views overrule an untrained student on shape 0.
    assert sums["student_units"].summary()["per_category"]["Chair"] > sums["student"].summary()["per_category"]["Chair"]

    off, _, _ = PartEvaluator(storage, Tables(SHAPES, knowledge), students, "", 8, StudentWithUnits(weight=0.0))(item)
    assert len(off["student_units"]) == 0 and len(off["student"]) == 2
