"""data.source=procedural (generation/procedural/reader.py): the generation stage's one
procedural path seen as a distill reader (same shapes, ids, splits and filters)."""

from __future__ import annotations

import pytest

import generation  # noqa: F401 - registers the procedural reader
from cluster.config import load_config
from cluster.passes.generate import plan_rows
from distill.config import DataConfig
from distill.readers import iter_items
from distill.records import ShapeError
from generation.procedural import SPLIT_START, make_shape, reader, shape_id, split_indices


def test_procedural_items():
    data = DataConfig(source="procedural", categories=["chair", "Lamp"], per_category=4, num_points=128)
    items = list(iter_items(data, seed=3))
    assert [i.shape_id for i in items][:2] == ["procedural/Chair/00000", "procedural/Chair/00001"]
    assert len(items) == 8 and {i.category for i in items} == {"Chair", "Lamp"}
    shape = items[5].load()
    assert shape.shape_id == items[5].shape_id and shape.points.shape == (128, 3) and shape.meta["seed"] == 3
    test = list(iter_items(DataConfig(source="procedural", categories=["chair"], per_category=4, split="test"), 0))
    # held-out instances: disjoint from train/all, same count
    assert [i.shape_id for i in test] == [f"procedural/Chair/{1_000_000 + i}" for i in range(4)]
    assert test[0].load().shape_id == test[0].shape_id
    assert len(list(iter_items(DataConfig(source="procedural"), seed=0))) == 8 * 24


def test_id_format_and_splits():
    assert shape_id("Chair", 7) == "procedural/Chair/00007" == make_shape("chair", 7, 0, 16).shape_id
    assert list(split_indices("val", 2, start=3)) == [SPLIT_START["val"] + 3, SPLIT_START["val"] + 4]
    with pytest.raises(ValueError, match="split='dev'"):
        split_indices("dev", 1)


@pytest.mark.parametrize("split", ["all", "test"])
def test_the_generation_stage_plans_the_same_instances(split):
    cfg = load_config(
        ["data.categories=[chair,cup]", "data.per_category=3", f"data.split={split}", "generation.name=procedural"]
    )
    planned = [r["shape_id"] for r in plan_rows(cfg, set())[0]]
    assert planned == [i.shape_id for i in iter_items(cfg.data, cfg.seed)]


def test_filter_rejects_fail_the_load(monkeypatch):
    import generation.filters

    monkeypatch.setattr(generation.filters, "check_shape", lambda shape: "flat: a sheet")
    item = next(reader.read(DataConfig(source="procedural", categories=["Cup"], per_category=1), 0))
    with pytest.raises(ShapeError, match="procedural/Cup/00000: flat: a sheet"):
        item.load()
