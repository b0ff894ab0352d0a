"""The pure planning functions of ``cluster.store.layout`` and ``Storage.manifest`` on a real folder."""

import json
import logging

import pyarrow as pa
import pytest

from cluster.store.layout import (
    SHAPE_PART_SIZE,
    PartItem,
    category_parts,
    group_knowledge,
    knowledge_part_name,
    part_complete,
    plan_parts,
    shape_part_of,
    shape_summary,
    shapes_per_part,
    unfinished_parts,
)
from cluster.store.storage import MANIFEST, PartError, Storage
from generation.procedural import make_shape

TABLE = "r/shapes"


# -- names --------------------------------------------------------------------------------
def test_knowledge_part_names_round_trip_and_are_deterministic():
    name = knowledge_part_name("part-00ab.parquet", ["s2", "s1", "s1"])
    assert name.startswith("part-00ab--") and name.endswith(".parquet")
    assert shape_part_of(name) == "part-00ab.parquet"
    # the digest is of the set of ids: order and repeats do not matter, other ids do
    assert knowledge_part_name("part-00ab.parquet", ["s1", "s2"]) == name
    assert knowledge_part_name("part-00ab.parquet", ["s1"]) != name
    assert knowledge_part_name("part-ffff.parquet", ["s1", "s2"]) != name
    # a shape part name that itself holds "--" still round-trips (the last "--" splits)
    odd = knowledge_part_name("chair--a.parquet", ["x"])
    assert shape_part_of(odd) == "chair--a.parquet"


@pytest.mark.parametrize("bad", ["part-1.parquet", "--abc.parquet", "part-1--abc.json"])
def test_shape_part_of_rejects_what_is_no_knowledge_part_name(bad):
    with pytest.raises(ValueError, match="parquet|knowledge part name"):
        shape_part_of(bad)


def test_knowledge_part_name_needs_a_parquet_shape_part():
    with pytest.raises(ValueError, match="does not end in .parquet"):
        knowledge_part_name("part-1.json", ["a"])


def test_group_knowledge_groups_and_sorts():
    a1, a2 = knowledge_part_name("a.parquet", ["1"]), knowledge_part_name("a.parquet", ["2"])
    b1 = knowledge_part_name("b.parquet", ["3"])
    grouped = group_knowledge([b1, a2, a1])
    assert list(grouped) == ["a.parquet", "b.parquet"]
    assert grouped["a.parquet"] == sorted([a1, a2]) and grouped["b.parquet"] == [b1]
    assert group_knowledge([]) == {}


# -- sizes and summaries -------------------------------------------------------------------
def test_shapes_per_part():
    assert shapes_per_part(0) == 1 and shapes_per_part(1) == 1
    assert shapes_per_part(16) == 4  # 1 worker × 4 parts
    assert shapes_per_part(16, workers=2) == 2 and shapes_per_part(17, workers=2) == 3
    assert shapes_per_part(10**6) == SHAPE_PART_SIZE and shapes_per_part(10**6, workers=10**6) == 1
    for bad in ((-1, 1, 4), (1, 0, 4), (1, 1, 0)):
        with pytest.raises(ValueError):
            shapes_per_part(*bad)


def test_shape_summary_and_category_parts():
    shapes = [make_shape("chair", i, 0, 64) for i in range(2)] + [make_shape("lamp", 0, 0, 64)]
    s = shape_summary(shapes)
    chair, lamp = shapes[0], shapes[2]
    assert s["shapes"] == 3 and s["categories"] == {chair.category: 2, lamp.category: 1}
    assert s["part_names"] == {chair.category: list(chair.part_names), lamp.category: list(lamp.part_names)}
    manifest = {"p1.parquet": s, "p0.parquet": shape_summary(shapes[:1])}
    assert category_parts(manifest) == {chair.category: tuple(chair.part_names), lamp.category: tuple(lamp.part_names)}
    clash = {
        **manifest,
        "p2.parquet": {"shapes": 1, "categories": {chair.category: 1}, "part_names": {chair.category: ["x"]}},
    }
    with pytest.raises(ValueError, match=r"p2\.parquet.*'Chair'"):
        category_parts(clash, where="T: ")
    with pytest.raises(ValueError, match="p9.parquet has no part names.*older release"):
        category_parts({"p9.parquet": {"shapes": 1, "categories": {"Chair": 1}}})


# -- completeness and planning ------------------------------------------------------------------
def _shapes(n_chair_a=3, n_lamp=2):
    return {
        "a.parquet": {"shapes": n_chair_a, "categories": {"Chair": n_chair_a}},
        "b.parquet": {"shapes": n_lamp, "categories": {"Lamp": n_lamp}},
        "c.parquet": {"shapes": 1, "categories": {"Chair": 1}},
    }


def _piece(shape_part, ids, with_units):
    return knowledge_part_name(shape_part, ids), {
        "done": len(ids),
        "shape_part": shape_part,
        "with_units": with_units,
        "units": 5 * sum(with_units.values()),
    }


def test_part_complete_adds_up_the_pieces():
    shape = {"shapes": 3}
    assert not part_complete(shape, [])
    assert not part_complete(shape, [{"done": 2}])
    assert part_complete(shape, [{"done": 2}, {"done": 1}])
    assert part_complete({"shapes": 0}, [])
    assert not part_complete(shape, [{"units": 9}])  # no done count: nothing finished


def test_unfinished_parts_and_plan_parts():
    shapes = _shapes()
    knowledge = dict(
        [
            _piece("a.parquet", ["a1", "a2"], {"Chair": 2}),
            _piece("a.parquet", ["a3"], {}),  # a3 rejected (done, no units)
            _piece("b.parquet", ["b1", "b2"], {"Lamp": 1}),
            _piece("c.parquet", ["c1"], {"Chair": 1}),
        ]
    )
    assert unfinished_parts(shapes, knowledge) == []
    plan = plan_parts(shapes, knowledge, None)
    assert [i.shape_part for i in plan.items] == ["a.parquet", "b.parquet", "c.parquet"]
    assert plan.shapes == 6 and plan.with_units == 4
    a = plan.items[0]
    assert a.categories == ("Chair",) and a.with_units == 2 and len(a.knowledge_parts) == 2
    assert a.knowledge_parts == tuple(sorted(a.knowledge_parts))

    chairs = plan_parts(shapes, knowledge, ["Chair"])
    assert [i.shape_part for i in chairs.items] == ["a.parquet", "c.parquet"]
    assert (chairs.shapes, chairs.with_units) == (4, 3)
    assert plan_parts(shapes, knowledge, ["Airplane"]).items == []

    # one piece of a.parquet lost: a.parquet is unfinished, and planning names it
    lost = {k: v for k, v in knowledge.items() if v["done"] != 1 or v["shape_part"] != "a.parquet"}
    assert unfinished_parts(shapes, lost) == ["a.parquet"]
    with pytest.raises(ValueError, match=r"shape parts \['a\.parquet'\] \(1 in all\) have no knowledge yet"):
        plan_parts(shapes, lost, None)
    # ... but a student of the lamps alone does not need it
    assert [i.shape_part for i in plan_parts(shapes, lost, ["Lamp"]).items] == ["b.parquet"]
    assert unfinished_parts(shapes, {}) == ["a.parquet", "b.parquet", "c.parquet"]


def test_plan_parts_names_orphan_knowledge():
    shapes = _shapes()
    name, summary = _piece("gone.parquet", ["g1"], {"Chair": 1})
    knowledge = dict([_piece("a.parquet", ["a1", "a2", "a3"], {"Chair": 3}), (name, summary)])
    with pytest.raises(ValueError, match=rf"knowledge parts \['{name}'\] belong to shape parts \['gone\.parquet'\]"):
        plan_parts(shapes, knowledge, None, where="K: ")
    assert unfinished_parts(shapes, knowledge) == ["b.parquet", "c.parquet"]


def test_part_item_row_round_trip():
    item = PartItem("a.parquet", ("a--1.parquet", "a--2.parquet"), ("Chair",), 3)
    back = PartItem.from_row(item.to_row())
    assert back.shape_part == item.shape_part and back.knowledge_parts == item.knowledge_parts
    # the row carries what a worker needs to read the item, nothing of the plan
    assert set(item.to_row()) == {"shape_part", "knowledge_parts"}


# -- Storage.manifest ------------------------------------------------------------------------------
def _table(ids):
    return pa.table({"shape_id": ids, "x": list(range(len(ids)))})


def _write(storage, name, ids, cat="Chair"):
    return storage.write_part(
        TABLE, _table(ids), done_ids=ids, name=name, summary={"shapes": len(ids), "categories": {cat: len(ids)}}
    )


def test_manifest_is_built_from_footers_and_recorded(tmp_path):
    storage = Storage(str(tmp_path))
    assert storage.manifest(TABLE) == {}
    _write(storage, "p0.parquet", ["a", "b"])
    _write(storage, "p1.parquet", ["c"], "Lamp")
    expected = {
        "p0.parquet": {"done": 2, "shapes": 2, "categories": {"Chair": 2}},
        "p1.parquet": {"done": 1, "shapes": 1, "categories": {"Lamp": 1}},
    }
    assert storage.part_footer(TABLE, "p0.parquet") == (["a", "b"], expected["p0.parquet"])
    assert storage.list_parts(TABLE) == ["p0.parquet", "p1.parquet"]
    assert storage.manifest(TABLE) == expected
    assert storage.read_json(f"{TABLE}/{MANIFEST}") == expected
    assert storage.reads.rows == {}  # planning opened footers only, no rows

    # A part the manifest does not know yet is summarised from its footer and recorded.
    _write(storage, "p2.parquet", ["d"])
    assert set(storage.manifest(TABLE)) == {"p0.parquet", "p1.parquet", "p2.parquet"}
    assert "p2.parquet" in storage.read_json(f"{TABLE}/{MANIFEST}")
    # An unreadable manifest is rebuilt from the footers.
    storage.write_bytes(f"{TABLE}/{MANIFEST}", b"{not json")
    again = storage.manifest(TABLE)
    assert again["p0.parquet"] == expected["p0.parquet"] and len(again) == 3
    assert json.loads(storage.read_bytes(f"{TABLE}/{MANIFEST}")) == again


def test_manifest_drops_a_part_that_is_gone_with_a_warning(tmp_path, caplog):
    storage = Storage(str(tmp_path))
    _write(storage, "p0.parquet", ["a"])
    _write(storage, "p1.parquet", ["b"])
    assert len(storage.manifest(TABLE)) == 2
    storage.delete(f"{TABLE}/p0.parquet")
    with caplog.at_level(logging.WARNING, logger="cluster.store.storage"):
        after = storage.manifest(TABLE)
    assert list(after) == ["p1.parquet"]
    assert any("gone" in r.getMessage() and "p0.parquet" in r.getMessage() for r in caplog.records)
    assert list(storage.read_json(f"{TABLE}/{MANIFEST}")) == ["p1.parquet"]
    with pytest.raises(PartError, match=r"p0\.parquet is missing"):
        storage.read_part(TABLE, "p0.parquet")


def test_manifest_quarantines_an_unreadable_part(tmp_path, caplog):
    storage = Storage(str(tmp_path))
    _write(storage, "p0.parquet", ["a"])
    storage.write_bytes(f"{TABLE}/p1.parquet", b"PAR1 truncated by a crash")
    with caplog.at_level(logging.WARNING, logger="cluster.store.storage"):
        manifest = storage.manifest(TABLE)
    assert list(manifest) == ["p0.parquet"]
    assert storage.list_parts(TABLE) == ["p0.parquet"]
    assert storage.exists(f"{TABLE}/_corrupt/p1.parquet")
    assert any("p1.parquet" in r.getMessage() and "_corrupt" in r.getMessage() for r in caplog.records)
    assert list(storage.read_json(f"{TABLE}/{MANIFEST}")) == ["p0.parquet"]
    # read_part quarantines too, and names the part
    storage.write_bytes(f"{TABLE}/p2.parquet", b"not parquet at all")
    with pytest.raises(PartError, match=r"p2\.parquet is unreadable.*_corrupt"):
        storage.read_part(TABLE, "p2.parquet")
    assert storage.exists(f"{TABLE}/_corrupt/p2.parquet") and not storage.exists(f"{TABLE}/p2.parquet")


def test_read_counter_counts_rows_per_table(tmp_path):
    storage = Storage(str(tmp_path))
    _write(storage, "p0.parquet", ["a", "b"])
    _write(storage, "p1.parquet", ["c"])
    storage.read_part(TABLE, "p0.parquet")
    storage.read_part(TABLE, "p1.parquet", ["shape_id"])
    assert storage.reads.rows == {TABLE: 3}
    storage.read_table(TABLE)
    assert storage.reads.rows == {TABLE: 6}
    storage.reads.reset()
    assert storage.reads.rows == {}
