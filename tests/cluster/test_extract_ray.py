"""Knowledge extraction on a real local Ray (2 CPUs) and in-process, over shape parts
with co-partitioned knowledge parts (``cluster.store.layout``)."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cluster.config import load_config
from cluster.passes.extract import extract, extract_pass, plan
from cluster.passes.extract_parts import PartExtractor, done_in_part, extract_shape, write_piece
from cluster.passes.extract_stages import TeachStage, render_part, render_rows
from cluster.passes.runner import pool_size, ray_dataset
from cluster.runtime.resources import extract_fused, fused_pool, teacher_actor_options
from cluster.store.layout import knowledge_part_name, shape_part_of, shape_summary
from cluster.store.rejects import read_rejects
from cluster.store.storage import MANIFEST, PartError, Storage
from distill.extract import render
from distill.records import (
    PIECE_SCHEMA,
    UNIT_SCHEMA,
    KnowledgeUnits,
    Mesh,
    columns_to_views,
    shapes_to_table,
    table_to_units,
    views_to_columns,
)
from distill.teachers import build_teacher
from generation.procedural import make_shape
from tests.backends import here, on_ray

RUN = "r"
SHAPES = f"{RUN}/shapes"
KNOWLEDGE = f"{RUN}/knowledge/round_0"
LOCAL = f"{RUN}/knowledge_local"
CATEGORIES = ("chair", "table", "lamp")


def _cfg(**kw):
    return load_config(
        ["run=r", "render.image_size=64", "data.num_points=256", "progress=false", "cluster.render_cpus=0.5"], **kw
    )


@pytest.fixture(scope="module")
def shapes():
    return [make_shape(CATEGORIES[i % 3], i // 3, 0, 256) for i in range(6)]


def _write_shapes(storage: Storage, shapes, table: pa.Table | None = None) -> list[str]:
    """Two shape parts (with their summaries, as ingest writes them); the ids in table order."""
    table = table if table is not None else shapes_to_table(shapes)
    half = table.num_rows // 2
    for i, (lo, hi) in enumerate(((0, half), (half, table.num_rows))):
        t = table.slice(lo, hi - lo)
        storage.write_part(
            SHAPES,
            t,
            done_ids=t.column("shape_id").to_pylist(),
            name=f"part-{i}.parquet",
            summary=shape_summary(shapes[lo:hi]),
        )
    return table.column("shape_id").to_pylist()


def _shape_ids_by_part(storage: Storage) -> dict[str, set[str]]:
    return {p: set(storage.part_footer(SHAPES, p)[0]) for p in storage.list_parts(SHAPES)}


def _assert_each_once(storage: Storage, ids: list[str], table_dir: str = KNOWLEDGE) -> dict[str, KnowledgeUnits]:
    """Every shape is done by exactly one knowledge part, which is named after the shape
    part holding the shape (co-partitioned) and holds the shape's units."""
    owner = _shape_ids_by_part(storage)
    done_all = []
    for name in storage.list_parts(table_dir):
        done, summary = storage.part_footer(table_dir, name)
        part = shape_part_of(name)
        assert set(done) <= owner[part], f"{name} finishes shapes of another shape part"
        assert summary["shape_part"] == part and summary["done"] == len(done)
        assert name == knowledge_part_name(part, done)
        rows = storage.read_part(table_dir, name)
        assert set(rows.column("shape_id").to_pylist()) <= set(done)
        assert summary["units"] == rows.num_rows
        done_all += done
    assert sorted(done_all) == sorted(ids)
    return table_to_units(storage.read_table(table_dir, schema=UNIT_SCHEMA))


def _assert_same_units(a: dict[str, KnowledgeUnits], b: dict[str, KnowledgeUnits]) -> None:
    assert a.keys() == b.keys()
    for sid in a:
        x, y = a[sid], b[sid]
        for field in ("view", "label", "score", "point_idx", "offsets"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=f"{sid}.{field}")
        assert x.teacher == y.teacher == "simulated"


# -- pure pieces (no Ray) -------------------------------------------------------------------
def test_view_columns_roundtrip_exactly(shapes):
    views = render(shapes[0], _cfg().render)
    back = columns_to_views(views_to_columns(views))
    for k in ("images", "depth", "pixel_labels", "point_uv", "point_visible"):
        np.testing.assert_array_equal(getattr(back, k), getattr(views, k))
        assert getattr(back, k).dtype == getattr(views, k).dtype
    np.testing.assert_array_equal(back.cameras.world_to_cam, views.cameras.world_to_cam)
    assert back.image_size == views.image_size


def test_render_rows_turns_a_failure_into_an_error_row(shapes):
    bad = shapes_to_table([shapes[1]]).to_pylist()[0]
    bad["mesh"] = Mesh(np.zeros((3, 3), np.float32), np.zeros((0, 3), np.int32)).to_bytes()
    batch = render_rows([shapes_to_table([shapes[0]]).to_pylist()[0], bad], _cfg().render)
    assert batch["error"][0] == "" and batch["error"][1].startswith("render: ValueError")
    assert len(batch["images"][0]) == 10 and len(batch["images"][1]) == 0


def test_plan_lists_unfinished_parts_from_the_manifests(tmp_path, shapes):
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    assert plan(storage, SHAPES, KNOWLEDGE) == (["part-0.parquet", "part-1.parquet"], 6)
    # part-0 finished (one shape rejected: done without units), part-1 half done
    storage.write_part(
        KNOWLEDGE,
        UNIT_SCHEMA.empty_table(),
        done_ids=ids[:3],
        name=knowledge_part_name("part-0.parquet", ids[:3]),
        summary={"shape_part": "part-0.parquet", "with_units": {}, "units": 0},
    )
    storage.write_part(
        KNOWLEDGE,
        UNIT_SCHEMA.empty_table(),
        done_ids=ids[3:4],
        name=knowledge_part_name("part-1.parquet", ids[3:4]),
        summary={"shape_part": "part-1.parquet", "with_units": {}, "units": 0},
    )
    assert plan(storage, SHAPES, KNOWLEDGE) == (["part-1.parquet"], 6)
    assert done_in_part(storage, KNOWLEDGE, "part-1.parquet") == {ids[3]}
    assert done_in_part(storage, KNOWLEDGE, "part-0.parquet") == set(ids[:3])
    assert storage.reads.rows == {}  # planning reads footers and manifests, never rows


def test_write_piece_writes_rejects_then_one_named_piece(tmp_path, shapes):
    storage = Storage(str(tmp_path))
    teacher = build_teacher(_cfg().teacher, seed=0)
    results = [extract_shape(s, _cfg().render, teacher) for s in shapes[:2]]
    results.append(("broken", None, "render: ValueError: no faces", "Chair"))
    row = write_piece(storage, RUN, KNOWLEDGE, "part-7.parquet", results)
    name = knowledge_part_name("part-7.parquet", [shapes[0].shape_id, shapes[1].shape_id, "broken"])
    units = sum(len(u) for _, u, _, _ in results if u is not None)
    assert row == {"piece": name, "new": 2, "rejected": 1, "units": units}
    assert PIECE_SCHEMA.names == list(row)
    done, summary = storage.part_footer(KNOWLEDGE, name)
    assert sorted(done) == sorted([shapes[0].shape_id, shapes[1].shape_id, "broken"])
    assert summary == {
        "done": 3,
        "shape_part": "part-7.parquet",
        "units": units,
        "with_units": {shapes[0].category: 1, shapes[1].category: 1},
    }
    assert [(r["item"], r["reason"]) for r in read_rejects(storage, RUN, "extract")] == [
        ("broken", "render: ValueError: no faces")
    ]
    assert write_piece(storage, RUN, KNOWLEDGE, "part-7.parquet", []) is None


def test_part_extractor_skips_what_its_pieces_finished(tmp_path, shapes):
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    cfg = _cfg()
    teacher = build_teacher(cfg.teacher, seed=cfg.seed)
    extract = PartExtractor(storage, RUN, SHAPES, KNOWLEDGE, cfg.render, teacher)
    (row,) = extract("part-0.parquet")
    whole = knowledge_part_name("part-0.parquet", ids[:3])
    assert row["piece"] == whole and (row["new"], row["rejected"]) == (3, 0)
    assert extract("part-0.parquet") == []  # every shape of the part is done
    first = table_to_units(storage.read_part(KNOWLEDGE, whole))
    # A lost piece is redone whole, under the same name, with the same units.
    storage.delete(f"{KNOWLEDGE}/{whole}")
    assert [r["piece"] for r in extract("part-0.parquet")] == [whole]
    _assert_same_units(first, table_to_units(storage.read_part(KNOWLEDGE, whole)))
    # A run that stopped after an earlier piece (ids[0]): only the rest is done.
    storage.delete(f"{KNOWLEDGE}/{whole}")
    write_piece(storage, RUN, KNOWLEDGE, "part-0.parquet", [(ids[0], None, "teacher: gone", "Chair")])
    (row,) = extract("part-0.parquet")
    assert row["piece"] == knowledge_part_name("part-0.parquet", ids[1:3]) and row["new"] == 2
    assert done_in_part(storage, KNOWLEDGE, "part-0.parquet") == set(ids[:3])


def test_split_layout_stages_in_process_match_the_part_extractor(tmp_path, shapes):
    """render_part → TeachStage, called as Ray Data would, give the fused path's units."""
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    cfg = _cfg()
    stage = TeachStage(cfg.teacher, cfg.seed, storage, RUN, KNOWLEDGE)
    rows = []
    for part in ("part-0.parquet", "part-1.parquet"):
        batches = list(render_part({"part": np.array([part], dtype=object)}, storage, SHAPES, KNOWLEDGE, cfg.render))
        assert [str(b["shape_id"][0]) for b in batches] == sorted(_shape_ids_by_part(storage)[part], key=ids.index)
        assert all(b["part"][0] == part and len(b["shape_id"]) == 1 for b in batches)
        rows += [r for b in batches for r in stage(b).to_pylist()]
    assert sum(r["new"] for r in rows) == len(ids)
    split = _assert_each_once(storage, ids)
    teacher = build_teacher(cfg.teacher, seed=cfg.seed)
    extract = PartExtractor(storage, RUN, SHAPES, LOCAL, cfg.render, teacher)
    for part in ("part-0.parquet", "part-1.parquet"):
        extract(part)
    _assert_same_units(split, _assert_each_once(storage, ids, LOCAL))
    # nothing left to render once the part's pieces finish it
    assert (
        list(render_part({"part": np.array(["part-0.parquet"], dtype=object)}, storage, SHAPES, KNOWLEDGE, cfg.render))
        == []
    )


def test_corrupt_knowledge_piece_is_quarantined_and_redone(tmp_path, shapes):
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    cfg = _cfg()
    first = extract(here(cfg), storage, SHAPES, KNOWLEDGE)
    assert (first["new"], first["skipped"]) == (len(ids), 0)
    before = _assert_each_once(storage, ids)
    pieces = storage.list_parts(KNOWLEDGE)
    # A piece that the manifest lists, damaged: its reader names it and quarantines it ...
    storage.write_bytes(f"{KNOWLEDGE}/{pieces[0]}", b"PAR1 cut short")
    with pytest.raises(PartError, match=pieces[0]):
        storage.read_part(KNOWLEDGE, pieces[0])
    assert storage.exists(f"{KNOWLEDGE}/_corrupt/{pieces[0]}")
    # ... and the re-run redoes exactly its shapes.
    again = extract(here(cfg), storage, SHAPES, KNOWLEDGE)
    assert again["new"] == len(_shape_ids_by_part(storage)[shape_part_of(pieces[0])])
    _assert_same_units(before, _assert_each_once(storage, ids))
    # A damaged piece the manifest does not list yet (written after it): quarantined when
    # the manifest picks it up, and redone.
    storage.delete(f"{KNOWLEDGE}/{MANIFEST}")
    storage.write_bytes(f"{KNOWLEDGE}/{pieces[1]}", b"PAR1 cut short")
    third = extract(here(cfg), storage, SHAPES, KNOWLEDGE)
    assert third["new"] == len(_shape_ids_by_part(storage)[shape_part_of(pieces[1])])
    assert storage.exists(f"{KNOWLEDGE}/_corrupt/{pieces[1]}")
    _assert_same_units(before, _assert_each_once(storage, ids))


# -- on Ray -----------------------------------------------------------------------------
def test_render_tasks_are_not_fused_into_the_teacher_actors(tmp_path, shapes, ray_local, capsys):
    storage = Storage(str(tmp_path))
    _write_shapes(storage, shapes)
    parts = storage.list_parts(SHAPES)
    # Same CPUs for render tasks and teacher actors: the case Ray Data would fuse.
    cfg = _cfg(cluster__render_cpus=1.0, cluster__extract_layout="split")
    ray_dataset(extract_pass(cfg, storage, SHAPES, KNOWLEDGE), [{"part": p} for p in parts]).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "TaskPoolMapOperator[MapBatches(render_part)]" in optimized
    assert "ActorPoolMapOperator[MapBatches(TeachStage)]" in optimized


def test_fused_layout_is_one_actor_stage_over_every_cpu(tmp_path, shapes, ray_local, capsys):
    storage = Storage(str(tmp_path))
    _write_shapes(storage, shapes)
    parts = storage.list_parts(SHAPES)
    cfg = _cfg()  # auto, and the teacher has no GPU
    assert extract_fused(cfg) and not extract_fused(_cfg(cluster__teacher_gpus=1.0))
    assert not extract_fused(_cfg(cluster__extract_layout="split"))
    pool = fused_pool(cfg)
    assert pool_size(pool, len(parts), 2.0) == {"min_size": 1, "max_size": 2} and pool.num_cpus == 1.0
    ray_dataset(extract_pass(cfg, storage, SHAPES, KNOWLEDGE), [{"part": p} for p in parts]).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "ActorPoolMapOperator[MapBatches(ExtractStage)]" in optimized
    assert "render_part" not in optimized and "TeachStage" not in optimized


def test_resume_does_only_the_rest(tmp_path, shapes, ray_local):
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    cfg = _cfg()
    # A run that stopped after one piece of each shape part: their first shapes are done
    # (here without units, so it shows that they are not redone).
    for part, sid in (("part-0.parquet", ids[0]), ("part-1.parquet", ids[3])):
        storage.write_part(
            KNOWLEDGE,
            UNIT_SCHEMA.empty_table(),
            done_ids=[sid],
            name=knowledge_part_name(part, [sid]),
            summary={"shape_part": part, "with_units": {}, "units": 0},
        )
    out = extract(on_ray(cfg), storage, SHAPES, KNOWLEDGE)
    assert (out["new"], out["rejected"]) == (len(ids) - 2, 0)
    units = _assert_each_once(storage, ids)
    assert ids[0] not in units and ids[3] not in units and set(units) == set(ids) - {ids[0], ids[3]}
    assert plan(storage, SHAPES, KNOWLEDGE) == ([], len(ids))


def test_bad_shapes_are_rejected_and_the_rest_finish(tmp_path, shapes, ray_local):
    storage = Storage(str(tmp_path))
    # Shapes of two sizes and 4 ring views with 8 images a teacher call: two shapes a
    # batch, so good and failed shapes of different sizes meet in one teacher batch.
    mixed = shapes[:3] + [make_shape(CATEGORIES[i], 1, 0, 300) for i in range(3)]
    cfg = _cfg(render__views="ring", render__num_views=4, teacher__batch_size=8, cluster__extract_layout="split")
    assert teacher_actor_options(cfg).batch_size == 2
    table = shapes_to_table(mixed)
    no_faces = Mesh(np.zeros((3, 3), np.float32), np.zeros((0, 3), np.int32)).to_bytes()
    mesh = table.column("mesh").to_pylist()
    mesh[1] = no_faces
    points = table.column("points").to_pylist()
    points[4] = [float("nan")] * len(points[4])  # NaN points: the shape record itself is invalid
    table = table.set_column(table.schema.get_field_index("mesh"), "mesh", pa.array(mesh, pa.binary()))
    table = table.set_column(table.schema.get_field_index("points"), "points", pa.array(points, pa.list_(pa.float32())))
    ids = _write_shapes(storage, mixed, table)
    out = extract(on_ray(cfg), storage, SHAPES, KNOWLEDGE)
    assert (out["new"], out["rejected"]) == (len(ids) - 2, 2)
    units = _assert_each_once(storage, ids)  # rejected shapes are done too (by the piece that rejected them)
    assert set(units) == set(ids) - {ids[1], ids[4]}
    rejects = {r["item"]: r["reason"] for r in read_rejects(storage, RUN, "extract")}
    assert set(rejects) == {ids[1], ids[4]}
    assert "faces" in rejects[ids[1]] and "NaN" in rejects[ids[4]]
    local = extract(here(cfg), storage, SHAPES, LOCAL)
    assert (local["new"], local["rejected"]) == (out["new"], out["rejected"])
    _assert_same_units(units, _assert_each_once(storage, ids, LOCAL))
    again = extract(on_ray(cfg), storage, SHAPES, KNOWLEDGE)
    assert (again["new"], again["rejected"], again["skipped"]) == (0, 0, len(ids))


def test_extract_on_ray_with_s3_storage(s3_bucket, shapes, ray_local):
    storage = Storage(s3_bucket + "/p")
    ids = _write_shapes(storage, shapes[:4])
    out = extract(on_ray(_cfg()), storage, SHAPES, KNOWLEDGE)
    assert (out["new"], out["rejected"]) == (4, 0) and out["table"].startswith("s3://")
    units = _assert_each_once(storage, ids)
    assert set(units) == set(ids)
    table = storage.read_table(KNOWLEDGE)
    assert pc.min(table.column("score")).as_py() >= 0.5
    assert storage.exists(f"{KNOWLEDGE}/{MANIFEST}")


def test_fused_pool_with_more_teacher_actors_than_parts_left(tmp_path, shapes, ray_local):
    """A resumed run with one unfinished shape part and ``cluster.teacher_actors=2``."""
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    write_piece(storage, RUN, KNOWLEDGE, "part-0.parquet", [(sid, None, "teacher: test", "Chair") for sid in ids[:3]])
    cfg = _cfg(cluster__teacher_actors=2)
    assert extract_fused(cfg) and plan(storage, SHAPES, KNOWLEDGE) == (["part-1.parquet"], 6)
    out = extract(on_ray(cfg), storage, SHAPES, KNOWLEDGE)
    assert (out["new"], out["skipped"]) == (3, 3)
