"""Knowledge extraction on a real local Ray (2 CPUs, one per module) and in-process."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cluster.extract_ray import (
    MAX_INPUT_BLOCKS,
    MAX_PART_SHAPES,
    SHAPE_UNITS_SCHEMA,
    actor_fault_options,
    build_dataset,
    columns_to_views,
    extract_local,
    extract_on_ray,
    input_blocks,
    load_rows,
    part_shapes,
    plan_shapes,
    render_rows,
    row_to_units,
    units_to_row,
    views_to_columns,
)
from cluster.rejects import read_rejects
from cluster.runtime import connect, extract_fused, fused_actor_options, teacher_actor_options
from cluster.storage import Storage
from distill.config import ClusterConfig, load_config
from distill.extract import render
from distill.records import UNIT_SCHEMA, KnowledgeUnits, Mesh, shapes_to_table, table_to_units
from distill.teachers import build_teacher
from generation.procedural import make_shape

RUN = "r"
SHAPES = f"{RUN}/shapes"
KNOWLEDGE = f"{RUN}/knowledge/round_0"
CATEGORIES = ("chair", "table", "lamp")


def _cfg(**kw):
    return load_config(
        ["run=r", "render.image_size=64", "data.num_points=256", "progress=false", "cluster.render_cpus=0.5"], **kw
    )


@pytest.fixture(scope="module")
def shapes():
    return [make_shape(CATEGORIES[i % 3], i // 3, 0, 256) for i in range(6)]


@pytest.fixture(scope="module")
def ray_local(s3_endpoint):
    """One local Ray for the module; workers get the moto S3 credentials and endpoint."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    env = {
        k: os.environ[k]
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    }
    connect(ClusterConfig(num_cpus=2), runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def _write_shapes(storage: Storage, shapes, table: pa.Table | None = None) -> list[str]:
    """Two parts of the shape table; returns the ids in table order."""
    table = table if table is not None else shapes_to_table(shapes)
    half = table.num_rows // 2
    for t in (table.slice(0, half), table.slice(half)):
        storage.write_part(SHAPES, t, done_ids=t.column("shape_id").to_pylist())
    return table.column("shape_id").to_pylist()


def _parts(storage: Storage, table_dir: str) -> list[tuple[set[str], set[str]]]:
    """Per part of a table folder: (its done ids, the shape ids of its rows)."""
    out = []
    for name in storage.part_names(table_dir):
        with storage.fs.open(storage.path(table_dir, name), "rb") as f:
            t = pq.read_table(f)
        done = json.loads(t.schema.metadata[b"partdistill.done_ids"])
        out.append((set(done), set(t.column("shape_id").to_pylist())))
    return out


def _assert_each_once(storage: Storage, ids: list[str], table_dir: str = KNOWLEDGE) -> dict[str, KnowledgeUnits]:
    """Every shape is done by exactly one part, and its units live in that part."""
    parts = _parts(storage, table_dir)
    assert sorted(i for done, _ in parts for i in done) == sorted(ids)
    for done, rows in parts:
        assert rows <= done
    return table_to_units(storage.read_table(table_dir, schema=UNIT_SCHEMA))


def _assert_same_units(a: dict[str, KnowledgeUnits], b: dict[str, KnowledgeUnits]) -> None:
    assert a.keys() == b.keys()
    for sid in a:
        x, y = a[sid], b[sid]
        for field in ("view", "label", "score", "point_idx", "offsets"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=f"{sid}.{field}")
        assert x.teacher == y.teacher == "simulated"


# -- pure pieces ------------------------------------------------------------------------
def test_part_shapes():
    assert part_shapes(0) == 1 and part_shapes(1) == 1 and part_shapes(16) == 2
    assert part_shapes(10_000) == MAX_PART_SHAPES


def test_plan_shapes_skips_done_and_repeats():
    refs, skipped = plan_shapes({"a": ["1", "2"], "b": ["3", "2"], "c": ["1"]}, done={"1"})
    assert refs == [("a", "2"), ("b", "3")] and skipped == 3


def test_input_blocks():
    assert input_blocks(0) == 1 and input_blocks(16) == 16 and input_blocks(10**6) == MAX_INPUT_BLOCKS


def test_actor_fault_options_restart_and_retry():
    opts = actor_fault_options()
    assert opts["max_restarts"] != 0 and opts["max_task_retries"] > 0


def test_view_columns_roundtrip_exactly(shapes):
    views = render(shapes[0], _cfg().render)
    back = columns_to_views(views_to_columns(views))
    for k in ("images", "depth", "pixel_labels", "point_uv", "point_visible"):
        np.testing.assert_array_equal(getattr(back, k), getattr(views, k))
        assert getattr(back, k).dtype == getattr(views, k).dtype
    np.testing.assert_array_equal(back.cameras.world_to_cam, views.cameras.world_to_cam)
    assert back.image_size == views.image_size


def test_units_row_roundtrip():
    u = KnowledgeUnits.from_lists("s", [0, 3], [1, 0], [0.5, 0.75], [np.array([1, 2]), np.array([7])], "simulated")
    row = pa.Table.from_pylist([units_to_row("s", u, "", "simulated")], schema=SHAPE_UNITS_SCHEMA).to_pylist()[0]
    back = row_to_units(row)
    for field in ("view", "label", "score", "point_idx", "offsets"):
        np.testing.assert_array_equal(getattr(back, field), getattr(u, field))


def test_load_rows_reads_each_ref_once_in_order(tmp_path, shapes):
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    parts = storage.part_names(SHAPES)
    owner = {sid: p for p in parts for sid in pq.read_table(storage.path(SHAPES, p)).column("shape_id").to_pylist()}
    refs = [(owner[i], i) for i in (ids[4], ids[0], ids[5])]
    assert [r["shape_id"] for r in load_rows(storage, SHAPES, refs)] == [ids[4], ids[0], ids[5]]
    with pytest.raises(RuntimeError, match="vanished"):
        load_rows(storage, SHAPES, [(parts[0], "no-such-shape")])


def test_render_rows_turns_a_failure_into_an_error_row(shapes):
    bad = shapes_to_table([shapes[1]]).to_pylist()[0]
    bad["mesh"] = Mesh(np.zeros((3, 3), np.float32), np.zeros((0, 3), np.int32)).to_bytes()
    batch = render_rows([shapes_to_table([shapes[0]]).to_pylist()[0], bad], _cfg().render)
    assert batch["error"][0] == "" and batch["error"][1].startswith("render: ValueError")
    assert len(batch["images"][0]) == 10 and len(batch["images"][1]) == 0


# -- on Ray -----------------------------------------------------------------------------
def test_render_tasks_are_not_fused_into_the_teacher_actors(tmp_path, shapes, ray_local, capsys):
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    refs = [(p, sid) for p in storage.part_names(SHAPES) for sid in ids]
    # Same CPUs for render tasks and teacher actors: the case Ray Data would fuse.
    build_dataset(_cfg(cluster__render_cpus=1.0, cluster__extract_layout="split"), storage, SHAPES, refs).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "TaskPoolMapOperator[MapBatches(render_refs)]" in optimized
    assert "ActorPoolMapOperator[MapBatches(TeachStage)]" in optimized


def test_fused_layout_is_one_actor_stage_over_every_cpu(tmp_path, shapes, ray_local, capsys):
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    refs = [(p, sid) for p in storage.part_names(SHAPES) for sid in ids]
    cfg = _cfg()  # auto, and the teacher has no GPU
    assert extract_fused(cfg) and not extract_fused(_cfg(cluster__teacher_gpus=1.0))
    assert not extract_fused(_cfg(cluster__extract_layout="split"))
    opts = fused_actor_options(cfg, 2.0)
    assert (opts.min_size, opts.max_size, opts.num_cpus) == (1, 2, 1.0)
    build_dataset(cfg, storage, SHAPES, refs).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "ActorPoolMapOperator[MapBatches(ExtractStage)]" in optimized
    assert "render_refs" not in optimized and "TeachStage" not in optimized


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_extract_on_ray_matches_local_then_skips(tmp_path, shapes, ray_local, layout):
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    cfg = _cfg(cluster__extract_layout=layout)
    out = extract_on_ray(cfg, storage, SHAPES, KNOWLEDGE)
    assert (out["new"], out["skipped"], out["rejected"]) == (len(ids), 0, 0) and out["units"] > 0
    on_ray = _assert_each_once(storage, ids)
    local = extract_local(cfg, storage, SHAPES, f"{RUN}/knowledge_local")
    assert (local["new"], local["units"]) == (out["new"], out["units"])
    _assert_same_units(on_ray, _assert_each_once(storage, ids, f"{RUN}/knowledge_local"))

    parts_before = storage.part_names(KNOWLEDGE)
    again = extract_on_ray(cfg, storage, SHAPES, KNOWLEDGE)
    assert (again["new"], again["skipped"], again["units"]) == (0, len(ids), 0)
    assert storage.part_names(KNOWLEDGE) == parts_before


def test_resume_does_only_the_rest(tmp_path, shapes, ray_local):
    storage = Storage(str(tmp_path))
    ids = _write_shapes(storage, shapes)
    # A run that stopped after one part: the first shape of each shape part is done.
    storage.write_part(KNOWLEDGE, UNIT_SCHEMA.empty_table(), done_ids=[ids[0], ids[3]])
    out = extract_on_ray(_cfg(), storage, SHAPES, KNOWLEDGE)
    assert (out["new"], out["skipped"]) == (len(ids) - 2, 2)
    units = _assert_each_once(storage, ids)
    assert ids[0] not in units and ids[1] in units


def test_bad_shapes_are_rejected_and_the_rest_finish(tmp_path, shapes, ray_local):
    storage = Storage(str(tmp_path))
    # Shapes of two sizes and 4 ring views with 8 images a teacher call: two shapes a
    # batch, so good and failed shapes of different sizes meet in one teacher batch.
    mixed = shapes[:3] + [make_shape(CATEGORIES[i], 1, 0, 300) for i in range(3)]
    cfg = _cfg(render__views="ring", render__num_views=4, teacher__batch_size=8)
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
    out = extract_on_ray(cfg, storage, SHAPES, KNOWLEDGE)
    assert (out["new"], out["rejected"]) == (len(ids) - 2, 2)
    units = _assert_each_once(storage, ids)  # rejected shapes are done too (by the part that rejected them)
    assert set(units) == set(ids) - {ids[1], ids[4]}
    rejects = {r["item"]: r["reason"] for r in read_rejects(storage, RUN, "extract")}
    assert set(rejects) == {ids[1], ids[4]}
    assert "faces" in rejects[ids[1]] and "NaN" in rejects[ids[4]]
    local = extract_local(cfg, storage, SHAPES, f"{RUN}/knowledge_local")
    assert (local["new"], local["rejected"]) == (out["new"], out["rejected"])
    _assert_same_units(units, table_to_units(storage.read_table(f"{RUN}/knowledge_local")))
    again = extract_on_ray(cfg, storage, SHAPES, KNOWLEDGE)
    assert (again["new"], again["rejected"], again["skipped"]) == (0, 0, len(ids))


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_a_killed_teacher_actor_is_replaced_and_its_shapes_retried(tmp_path, shapes, ray_local, layout):
    storage = Storage(str(tmp_path / "root"))
    ids = _write_shapes(storage, shapes)
    marker = str(tmp_path / "crashed-once")

    def crash_once_factory(cfg, seed):
        # Pickled by value into the actors (a closure): the first actor to teach a shape
        # leaves the marker and dies as a crash would (no exception, no cleanup).
        inner = build_teacher(cfg, seed=seed)

        class CrashOnce:
            name, output = inner.name, inner.output

            def predict(self, views, shape):
                if not os.path.exists(marker):
                    open(marker, "w").close()
                    os._exit(1)
                return inner.predict(views, shape)

        return CrashOnce()

    cfg = _cfg(cluster__extract_layout=layout)
    out = extract_on_ray(cfg, storage, SHAPES, KNOWLEDGE, teacher_factory=crash_once_factory)
    assert os.path.exists(marker), "the actor should have crashed once"
    assert (out["new"], out["rejected"]) == (len(ids), 0)
    on_ray = _assert_each_once(storage, ids)
    extract_local(_cfg(), storage, SHAPES, f"{RUN}/knowledge_local")
    _assert_same_units(on_ray, table_to_units(storage.read_table(f"{RUN}/knowledge_local")))


def test_extract_on_ray_with_s3_storage(s3_bucket, shapes, ray_local):
    storage = Storage(s3_bucket + "/p")
    ids = _write_shapes(storage, shapes[:4])
    out = extract_on_ray(_cfg(), storage, SHAPES, KNOWLEDGE)
    assert (out["new"], out["rejected"]) == (4, 0) and out["table"].startswith("s3://")
    units = _assert_each_once(storage, ids)
    assert set(units) == set(ids)
    table = storage.read_table(KNOWLEDGE)
    assert pc.min(table.column("score")).as_py() >= 0.5
