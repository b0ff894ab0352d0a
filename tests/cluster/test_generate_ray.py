"""The generation stage on a real local Ray (2 CPUs, one per module) and in-process."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster.config import load_config
from cluster.passes.generate import (
    MAX_PART_SHAPES,
    generate,
    generator_actor_options,
    part_shapes,
    plan_rows,
    resolve_categories,
)
from cluster.pipeline import generate_shapes
from cluster.store.layout import part_name
from cluster.store.rejects import read_rejects
from cluster.store.storage import Storage
from distill.records import GENERATE_RESULT_SCHEMA, SHAPE_SCHEMA, table_to_shapes
from distill.sampling import derive_seed
from generation.procedural import make_shape
from generation.prompts import make_prompt
from tests.backends import here, on_ray

RUN = "r"
POINTS = 128


def _cfg(*args: str, **kw):
    return load_config(["run=r", f"data.num_points={POINTS}", "progress=false", *args], **kw)


def _proc_cfg(count: int = 5, *args: str):
    return _cfg("generation.categories=[chair,table,lamp]", f"generation.count={count}", *args)


def _shap_e_cfg(tiny_dir: str, count: int = 4, *args: str):
    return _cfg(
        "generation.name=shap_e",
        f"generation.model={tiny_dir}",
        f"generation.count={count}",
        "generation.categories=[chair,table]",
        "generation.num_inference_steps=2",
        "generation.grid_size=24",
        "generation.batch_size=2",
        "generation.device=cpu",
        *args,
    )


def _table_ids(storage: Storage, table_dir: str) -> list[str]:
    return storage.read_table(table_dir, columns=["shape_id"], schema=SHAPE_SCHEMA).column("shape_id").to_pylist()


def _part_done(storage: Storage, table_dir: str) -> dict[str, list[str]]:
    out = {}
    for name in storage.part_names(table_dir):
        with storage.fs.open(storage.path(table_dir, name), "rb") as f:
            out[name] = json.loads(pq.read_schema(f).metadata[b"partdistill.done_ids"])
    return out


# -- the plan (pure) ----------------------------------------------------------------------
def test_part_shapes():
    assert part_shapes(0) == 1 and part_shapes(5) == 1 and part_shapes(80) == 10
    assert part_shapes(10**6) == MAX_PART_SHAPES
    with pytest.raises(ValueError):
        part_shapes(-1)


def test_plan_rows_procedural_ids_match_the_generator_and_skip_done():
    cfg = _proc_cfg(3)
    rows, asked, skipped = plan_rows(cfg, set())
    assert asked == 9 and skipped == 0 and len(rows) == 9
    assert [r["shape_id"] for r in rows[:3]] == [f"procedural/Chair/{i:05d}" for i in range(3)]
    assert rows[0]["shape_id"] == make_shape("Chair", 0, 0, 16).shape_id  # canonical spelling
    rows2, asked2, skipped2 = plan_rows(cfg, {"procedural/Table/00001", "elsewhere/x"})
    assert (asked2, skipped2, len(rows2)) == (9, 1, 8)
    start = plan_rows(_proc_cfg(2, "generation.start=10"), set())[0]
    assert [r["index"] for r in start[:2]] == [10, 11]


def test_plan_rows_shap_e_prompts_and_seeds_are_deterministic():
    cfg = _cfg("generation.name=shap_e", "generation.count=3", "generation.categories=[Chair,airplane]", "seed=5")
    rows, asked, _ = plan_rows(cfg, set())
    assert asked == 6 and rows[0]["shape_id"] == "generated/Chair/00000"
    assert rows[3]["shape_id"] == "generated/Airplane/00000"  # canonical spelling from the part tables
    for r in rows:
        assert r["prompt"] == make_prompt(r["category"], r["index"], 5, cfg.generation.templates, cfg.generation.styles)
        assert r["seed"] == derive_seed(5, r["shape_id"])
    assert plan_rows(cfg, set())[0] == rows


def test_categories_errors_and_defaults():
    assert resolve_categories(_cfg()) == ["Airplane", "Car", "Chair", "Guitar", "Lamp", "Rocket", "Skateboard", "Table"]
    with pytest.raises(ValueError, match="procedural category"):
        plan_rows(_cfg("generation.categories=[teapot]"), set())
    with pytest.raises(ValueError, match=r"generation.categories: 'teapot'.*generation.part_names"):
        plan_rows(_cfg("generation.name=shap_e", "generation.categories=[teapot]"), set())
    cfg = _cfg(
        "generation.name=shap_e", "generation.categories=[teapot]", "generation.part_names={teapot: [spout, lid]}"
    )
    rows, _, _ = plan_rows(cfg, set())
    assert rows[0]["shape_id"] == "generated/teapot/00000"
    with pytest.raises(ValueError, match="generation.templates"):
        plan_rows(_cfg("generation.name=shap_e", "generation.templates=[nothing]"), set())
    # count: generation.count, else data.per_category, else 24.
    assert plan_rows(_cfg("generation.categories=[chair]", "data.per_category=7"), set())[1] == 7
    assert plan_rows(_cfg("generation.categories=[chair]"), set())[1] == 24


def test_actor_options_fall_back_to_the_cluster_settings():
    opts = generator_actor_options(_cfg("cluster.teacher_actors=3", "cluster.teacher_gpus=0.5"))
    assert (opts.size, opts.num_gpus, opts.num_cpus, opts.batch_size) == (3, 0.5, 1.0, 4)
    opts = generator_actor_options(_cfg("generation.actors=2", "generation.gpus=1", "generation.batch_size=8"))
    assert (opts.size, opts.num_gpus, opts.batch_size) == (2, 1.0, 8)


def test_part_names_are_a_function_of_the_ids():
    assert part_name(["b", "a"]) == part_name(["a", "b"]) != part_name(["a"])
    assert part_name(["a"]).startswith("part-") and part_name(["a"]).endswith(".parquet")


# -- procedural ----------------------------------------------------------------------------
def test_procedural_local_writes_what_make_shape_makes(tmp_path):
    storage = Storage(str(tmp_path))
    summary = generate(here(_proc_cfg(4)), storage)
    assert summary["asked"] == 12 and summary["new"] == 12 and summary["rejected"] == 0
    assert summary["table"] == storage.uri("r/shapes")
    shapes = {s.shape_id: s for s in table_to_shapes(storage.read_table("r/shapes"))}
    ref = make_shape("Lamp", 2, 0, POINTS)
    np.testing.assert_array_equal(shapes[ref.shape_id].points, ref.points)
    np.testing.assert_array_equal(shapes[ref.shape_id].labels, ref.labels)


def test_procedural_on_ray_writes_each_shape_once_then_skips(tmp_path, ray_local):
    storage = Storage(str(tmp_path))
    cfg = _proc_cfg(6)
    summary = generate(on_ray(cfg), storage)
    assert (summary["asked"], summary["new"], summary["rejected"], summary["skipped"]) == (18, 18, 0, 0)
    ids = _table_ids(storage, "r/shapes")
    assert len(ids) == len(set(ids)) == 18
    parts = _part_done(storage, "r/shapes")
    assert summary["parts"] == len(parts) >= 2
    for name, done in parts.items():  # each part is done with exactly its rows
        rows = pq.read_table(storage.fs.open(storage.path("r/shapes", name), "rb"), columns=["shape_id"])
        assert sorted(rows.column("shape_id").to_pylist()) == sorted(done)
    shapes = table_to_shapes(storage.read_table("r/shapes"))
    assert all(s.source == "procedural" and s.labels is not None and s.num_points == POINTS for s in shapes)
    # The same shapes as the local driver makes.
    local = Storage(str(tmp_path / "local"))
    generate(here(cfg), local)
    ref = {s.shape_id: s for s in table_to_shapes(local.read_table("r/shapes"))}
    for s in shapes:
        np.testing.assert_array_equal(s.points, ref[s.shape_id].points)
        # Superpoints are computed where the shape is made and stored with it, the same on
        # Ray and here (cut pursuit is deterministic).
        assert s.superpoints is not None and s.superpoints.shape == (POINTS,)
        np.testing.assert_array_equal(s.superpoints, ref[s.shape_id].superpoints)

    again = generate(on_ray(cfg), storage)
    assert (again["new"], again["skipped"], again["parts"]) == (0, 18, 0)
    assert sorted(_part_done(storage, "r/shapes")) == sorted(parts)


def test_procedural_on_ray_resumes_only_the_missing_part(tmp_path, ray_local):
    storage = Storage(str(tmp_path))
    cfg = _proc_cfg(6)
    generate(on_ray(cfg), storage)
    parts = _part_done(storage, "r/shapes")
    lost_name, lost_ids = sorted(parts.items())[0]
    storage.delete(f"r/shapes/{lost_name}")
    summary = generate(on_ray(cfg), storage)
    assert summary["new"] == len(lost_ids) and summary["skipped"] == 18 - len(lost_ids)
    assert sorted(_table_ids(storage, "r/shapes")) == sorted(i for ids in parts.values() for i in ids)


def test_procedural_on_ray_to_s3(s3_bucket, ray_local):
    storage = Storage(s3_bucket)
    summary = generate(on_ray(_proc_cfg(2)), storage)
    assert summary["new"] == 6 and summary["table"] == f"{s3_bucket}/r/shapes"
    assert len(_table_ids(storage, "r/shapes")) == 6


def test_generate_job_prints_its_summary(tmp_path, ray_local, capsys):
    from jobs.generate import main

    summary = main(
        [
            f"storage.root={tmp_path}",
            "run=j",
            "generation.categories=[car]",
            "generation.count=3",
            f"data.num_points={POINTS}",
            "progress=false",
        ]
    )
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["job"] == "generate" and last["new"] == 3 == summary["new"]
    assert json.loads((tmp_path / "j" / "metrics.json").read_text())["generate"]["asked"] == 3
    assert len(Storage(str(tmp_path)).read_table("j/shapes")) == 3


@pytest.mark.parametrize("backend", ["ray", "local"])
def test_generate_shapes_obeys_cluster_backend(tmp_path, ray_local, caplog, backend):
    caplog.set_level("INFO", logger="cluster")
    cfg = _proc_cfg(1, "generation.output=corpus", f"cluster.backend={backend}")
    summary = generate_shapes(cfg, Storage(str(tmp_path)))
    assert summary["new"] == 3 and summary["table"].endswith("r/corpus")
    assert f"generate procedural ({backend})" in caplog.text


# -- shap_e -------------------------------------------------------------------------------
def _check_shap_e_outcome(storage: Storage, summary: dict, asked: int, table_dir: str = "r/shapes") -> None:
    assert summary["asked"] == asked and summary["new"] + summary["rejected"] == asked
    ids = _table_ids(storage, table_dir)
    assert len(ids) == len(set(ids)) == summary["new"]
    rejects = read_rejects(storage, RUN, "generate")
    assert len(rejects) == summary["rejected"]
    assert set(ids).isdisjoint(r["item"] for r in rejects)
    kinds = {}
    for r in rejects:
        kind = r["reason"].split(":", 1)[0]
        assert kind in ("empty", "invalid", "degenerate", "flat", "fragmented", "extent", "error"), r
        assert "prompt '" in r["reason"]
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds == summary["reject_kinds"]
    for s in table_to_shapes(storage.read_table(table_dir)):
        assert s.source == "generated" and s.labels is None and s.mesh.face_labels is None
        assert s.shape_id.startswith("generated/") and s.num_points == POINTS
        assert s.meta["prompt"] and s.meta["seed"] == derive_seed(0, s.shape_id)


def test_shap_e_local_counts_add_up(tmp_path, tiny_dir):
    storage = Storage(str(tmp_path))
    summary = generate(here(_shap_e_cfg(tiny_dir, 3)), storage)
    _check_shap_e_outcome(storage, summary, 6)


@pytest.mark.slow
def test_shap_e_on_ray_writes_or_rejects_every_shape_then_skips(tmp_path, tiny_dir, ray_local):
    storage = Storage(str(tmp_path))
    cfg = _shap_e_cfg(tiny_dir, 4)
    summary = generate(on_ray(cfg), storage)
    _check_shap_e_outcome(storage, summary, 8)
    # The tiny random model makes some blobs and some debris: both paths are exercised.
    assert summary["new"] >= 1 and summary["rejected"] >= 1
    again = generate(on_ray(cfg), storage)
    assert (again["new"], again["rejected"], again["skipped"]) == (0, 0, 8)
    assert len(read_rejects(storage, RUN, "generate")) == summary["rejected"]


@pytest.mark.slow
def test_shap_e_on_ray_fails_clearly_without_the_model(tmp_path, ray_local):
    cfg = _cfg("generation.name=shap_e", f"generation.model={tmp_path / 'missing'}", "generation.count=1")
    with pytest.raises(Exception, match="generation.model="):
        generate(on_ray(cfg), Storage(str(tmp_path)))


def test_result_schema():
    assert GENERATE_RESULT_SCHEMA.names == ["shape_id", "error", "part"]
