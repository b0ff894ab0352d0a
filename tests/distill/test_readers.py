"""Source readers (distill/readers.py) and the category tables (distill/categories.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from distill.categories import PSB_PARTS, SHAPENETPART_PARTS, SHAPENETPART_PID_START, part_names_for
from distill.config import DataConfig
from distill.readers import iter_items, read_off, read_psb_labels
from distill.records import ShapeError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared data folder sits beside the repository)")
    return path


def _on_labelled_faces(shape) -> float:
    """Largest distance from a point to the nearest face of the stored mesh carrying its label."""
    mesh = shape.mesh
    worst = 0.0
    for label in np.unique(shape.labels):
        sub = trimesh.Trimesh(mesh.vertices, mesh.faces[mesh.face_labels == label], process=False)
        pts = shape.points[shape.labels == label].astype(np.float64)
        _, dist, _ = trimesh.proximity.closest_point(sub, pts)
        worst = max(worst, float(dist.max()))
    return worst


# ---------------------------------------------------------------------------------------
# Category tables


def test_part_names_lookup():
    assert part_names_for("Lamp") == ["base", "lampshade", "canopy", "tube"]
    assert part_names_for("chair") == ["back", "seat", "leg", "armrest"]  # ShapeNetPart first
    assert part_names_for("chair", source="psb") == ["arm", "backsupport", "leg", "support"]
    assert part_names_for("Octopus") == ["body", "leg"]  # only in PSB
    assert part_names_for("Sofa", extra={"sofa": ["seat", "arm"]}) == ["seat", "arm"]
    with pytest.raises(ValueError, match="unknown category 'Sofa'.*data.part_names"):
        part_names_for("Sofa")
    # Global ShapeNetPart ids: 50 parts, Lamp 24..27, Table last at 47.
    assert SHAPENETPART_PID_START["Lamp"] == 24 and SHAPENETPART_PID_START["Table"] == 47
    assert sum(len(p) for p in SHAPENETPART_PARTS.values()) == 50


def test_tables_agree_with_shared_metadata():
    root = _shared("shapenetpart")
    starts = json.loads((root / "shapenet_pid_start.json").read_text())
    assert {k.lower(): v for k, v in SHAPENETPART_PID_START.items()} == starts
    meta = json.loads((root / "shapenet-part-order_meta.json").read_text())
    for name, parts in meta.items():
        assert SHAPENETPART_PARTS[name][: len(parts)] == parts


def test_psb_table_covers_the_label_files_and_the_documented_names():
    root = _shared("labeled_psb")
    for category, parts in PSB_PARTS.items():
        used = set()
        for f in (root / category).glob("*_labels.txt"):
            lines = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
            used |= set(lines[0::2])
        # The names these meshes use, sorted, first; documented names they lack come after.
        assert parts[: len(used)] == sorted(used), category
    # Labeled PSB documents an engine part for airplanes (3 of the full set's 20 meshes).
    assert PSB_PARTS["Airplane"] == ["body", "rudder", "stabilizer", "wing", "engine"]


def test_psb_airplane_with_an_engine_is_read(tmp_path):
    # A tetrahedron labelled with the documented part this sample's airplanes lack.
    folder = tmp_path / "Airplane"
    folder.mkdir()
    (folder / "1.off").write_text("OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 2 1\n3 0 1 3\n3 0 3 2\n3 1 2 3\n")
    (folder / "1_labels.txt").write_text("body\n1 2\nengine\n3 4\n")
    shape = next(iter_items(DataConfig(source="psb", path=str(tmp_path), num_points=64), 0)).load()
    assert shape.part_names[4] == "engine"
    assert set(np.unique(shape.labels)) == {0, 4}


# ---------------------------------------------------------------------------------------
# Labeled PSB


def test_psb_listing_splits_and_filters():
    root = str(_shared("labeled_psb"))
    items = list(iter_items(DataConfig(source="psb", path=root), seed=0))
    assert len(items) == 190 and len({i.shape_id for i in items}) == 190
    assert items[0].shape_id == "psb/Airplane/61" and items[0].path.endswith("Airplane/61.off")
    train = list(iter_items(DataConfig(source="psb", path=root, split="train"), seed=0))
    test = list(iter_items(DataConfig(source="psb", path=root, split="test"), seed=0))
    assert len(train) == len(test) == 95
    assert not {i.shape_id for i in train} & {i.shape_id for i in test}
    # Numeric order: Human 1..9 in train, 11..19 in test.
    human = [i.shape_id for i in train if i.category == "Human"]
    assert human == [f"psb/Human/{k}" for k in (1, 3, 5, 7, 9)]
    assert list(iter_items(DataConfig(source="psb", path=root, split="val"), seed=0)) == []
    few = list(iter_items(DataConfig(source="psb", path=root, categories=["chair", "VASE"], per_category=2), 0))
    assert [i.shape_id for i in few] == ["psb/Chair/101", "psb/Chair/103", "psb/Vase/361", "psb/Vase/363"]
    with pytest.raises(ValueError, match="unknown psb category 'Sofa'; available: Airplane, Ant"):
        iter_items(DataConfig(source="psb", path=root, categories=["Sofa"]), seed=0)


def test_psb_all_shapes_read_with_labels_on_their_faces():
    root = str(_shared("labeled_psb"))
    start = time.perf_counter()
    shapes = [item.load() for item in iter_items(DataConfig(source="psb", path=root), seed=0)]
    elapsed = time.perf_counter() - start
    print(f"read {len(shapes)} PSB shapes in {elapsed:.1f} s")
    assert len(shapes) == 190
    for s in shapes:
        assert s.points.shape == (2048, 3) and s.labels.shape == (2048,) and s.source == "psb"
        assert s.part_names == PSB_PARTS[s.category]
        assert s.labels.min() >= 0 and np.linalg.norm(s.points, axis=1).max() <= 1 + 1e-5
        assert len(s.mesh.face_labels) == len(s.mesh.faces)
    # A few shapes fully: the stored face labels are the file's, and every point lies on a
    # face of its own label.
    for s in shapes[::38]:
        vertices, faces = read_off(s.meta["file"])
        truth = read_psb_labels(s.meta["labels_file"], len(faces), s.part_names)
        if len(s.mesh.faces) == len(faces):  # no degenerate faces were dropped
            assert np.array_equal(s.mesh.face_labels, truth)
        assert _on_labelled_faces(s) < 1e-5, s.shape_id


def test_psb_is_reproducible():
    root = str(_shared("labeled_psb"))
    data = DataConfig(source="psb", path=root, categories=["Cup"], per_category=1)
    a = next(iter_items(data, seed=0)).load()
    b = next(iter_items(data, seed=0)).load()
    c = next(iter_items(data, seed=1)).load()
    assert np.array_equal(a.points, b.points) and not np.array_equal(a.points, c.points)


# ---------------------------------------------------------------------------------------
# ShapeNetPart


def test_shapenetpart_sample():
    root = _shared("shapenetpart")
    items = list(iter_items(DataConfig(source="shapenetpart", path=str(root)), seed=0))
    assert [i.category for i in items] == ["Skateboard", "Skateboard", "Table", "Table"]
    assert items[0].shape_id == "shapenetpart/04225987/1ad8d7573dc57ebc247a956ed3779e34"
    sizes = {
        split: len(list(iter_items(DataConfig(source="shapenetpart", path=str(root), split=split), 0)))
        for split in ("train", "val", "test")
    }
    assert sizes == {"train": 3, "val": 0, "test": 1}
    # Asking for a real category with no files here yields nothing, not an error.
    assert list(iter_items(DataConfig(source="shapenetpart", path=str(root), categories=["lamp"]), 0)) == []
    for item in items:
        shape = item.load()
        assert shape.points.shape == (2048, 3) and shape.normals.shape == (2048, 3)
        assert shape.part_names == SHAPENETPART_PARTS[item.category]
        raw = np.loadtxt(item.path)
        # Map each chosen point back to its file row through the stored normalisation.
        n = shape.meta["normalize"]
        back = shape.points.astype(np.float64) * n["scale"] + np.array(n["center"])
        dist, row = cKDTree(raw[:, :3]).query(back)
        assert dist.max() < 1e-5
        expected = raw[row, 6].astype(np.int64) - SHAPENETPART_PID_START[item.category]
        assert np.array_equal(shape.labels, expected)
        assert np.isclose(np.linalg.norm(shape.points, axis=1).max(), 1.0, atol=0.05)


# ---------------------------------------------------------------------------------------
# Files


def _write_box(path: Path) -> None:
    trimesh.creation.box(extents=(1, 2, 3)).export(path)


def test_files_source_reads_meshes_point_clouds_and_scenes(tmp_path):
    (tmp_path / "chair").mkdir()
    (tmp_path / "misc").mkdir()
    _write_box(tmp_path / "chair" / "a.obj")
    cloud = np.random.default_rng(0).normal(size=(500, 3))
    trimesh.PointCloud(cloud).export(tmp_path / "chair" / "b.ply")
    _write_box(tmp_path / "misc" / "c.stl")
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box(extents=(1, 1, 1)))
    scene.add_geometry(trimesh.creation.icosphere(1), transform=trimesh.transformations.translation_matrix([3, 0, 0]))
    scene.export(tmp_path / "misc" / "d.glb")

    items = list(iter_items(DataConfig(source="files", path=str(tmp_path), num_points=256), seed=0))
    assert [i.shape_id for i in items] == ["files/chair/a", "files/chair/b", "files/misc/c", "files/misc/d"]
    assert [i.category for i in items] == ["chair", "chair", "misc", "misc"]
    a, b = items[0].load(), items[1].load()
    assert a.part_names == SHAPENETPART_PARTS["Chair"] and a.labels is None and len(a.mesh.faces) == 12
    assert a.points.shape == (256, 3) and np.isclose(np.abs(a.mesh.vertices).max(), 3 / np.sqrt(14), atol=1e-5)
    assert b.mesh is None and b.points.shape == (256, 3) and b.labels is None
    # "misc" is no known category: its files are rejected one by one, with the reason.
    with pytest.raises(ValueError, match="unknown category 'misc'"):
        items[2].load()
    # With a category and part names given, every file reads; the glb scene is one mesh.
    data = DataConfig(source="files", path=str(tmp_path), category="Thing", part_names=["x", "y"], num_points=128)
    shapes = {i.shape_id: i.load() for i in iter_items(data, seed=0)}
    assert all(s.category == "Thing" and s.part_names == ["x", "y"] for s in shapes.values())
    d = shapes["files/misc/d"]
    assert len(d.mesh.faces) == 12 + 80 and d.points[:, 0].max() - d.points[:, 0].min() > 1.5
    # A single file as data.path.
    one = list(iter_items(DataConfig(source="files", path=str(tmp_path / "misc" / "c.stl"), category="Chair"), 0))
    assert [i.shape_id for i in one] == ["files/c"] and one[0].load().num_points == 2048


def test_files_source_keeps_ids_unique_and_reports_bad_files(tmp_path):
    _write_box(tmp_path / "a.obj")
    _write_box(tmp_path / "a.stl")
    (tmp_path / "empty.obj").write_bytes(b"")
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    data = DataConfig(source="files", path=str(tmp_path), category="Chair")
    items = {i.shape_id: i for i in iter_items(data, seed=0)}
    assert set(items) == {"files/a_obj", "files/a_stl", "files/empty", "files/junk"}
    with pytest.raises(ShapeError, match="empty.obj: empty file"):
        items["files/empty"].load()
    with pytest.raises(ShapeError, match="junk.ply"):
        items["files/junk"].load()
    assert items["files/a_stl"].load().num_points == 2048
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        iter_items(DataConfig(source="files", path=str(tmp_path / "nope")), seed=0)


# ---------------------------------------------------------------------------------------
# Bad PSB-style files: each item's load fails with its reason; listing goes on.

_TETRA_V = "0 0 0\n1 0 0\n0 1 0\n0 0 1\n"
_TETRA_F = "3 0 2 1\n3 0 1 3\n3 0 3 2\n3 1 2 3\n"


def _psb_dir(tmp_path: Path) -> Path:
    cup = tmp_path / "Cup"
    cup.mkdir()
    good_labels = "body\n1 2 3\nhandle\n4\n"
    files = {
        "1": (f"OFF\n4 4 0\n{_TETRA_V}{_TETRA_F}", good_labels),
        "2": (f"OFF\n4 4 0\n{_TETRA_V}3 0 2 1\n", good_labels),  # truncated
        "3": (f"OFF\n4 4 0\n{_TETRA_V}{_TETRA_F}", "body\n1 2 3 999999\nhandle\n4\n"),
        "4": (f"OFF\n4 4 0\n{_TETRA_V}{_TETRA_F}", "body\n1 2\n"),  # faces 3, 4 unlabelled
        "5": (f"OFF\n4 4 0\n0 0 0\n1 nan 0\n0 1 0\n0 0 1\n{_TETRA_F}", good_labels),
        "6": (f"OFF\n4 4 0\n0 0 0\n1 1 1\n2 2 2\n3 3 3\n{_TETRA_F}", good_labels),  # zero area
        "7": ("", good_labels),
        "8": (f"OFF\n4 4 0\n{_TETRA_V}{_TETRA_F}", "body\n1 2 3\nlid\n4\n"),  # unknown part
        "9": (f"OFF\n4 4 0\n{_TETRA_V}{_TETRA_F}", "body\n1 2 3 4\nhandle\n4\n"),  # face 4 twice
    }
    for name, (off, labels) in files.items():
        (cup / f"{name}.off").write_text(off)
        (cup / f"{name}_labels.txt").write_text(labels)
    (cup / "10.off").write_text(f"OFF\n4 4 0\n{_TETRA_V}{_TETRA_F}")  # no labels file
    # A quad mesh with a comment and counts on the OFF line: fan-triangulated.
    (cup / "11.off").write_text("OFF 4 1 0\n# a square\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    (cup / "11_labels.txt").write_text("body\n1\nhandle\n2\n")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("2", "truncated OFF: 4 vertices and 4 faces declared, only 5 data lines"),
        ("3", "references face 999999 but the mesh has 4 faces"),
        ("4", "2 of 4 faces have no label"),
        ("5", "1 vertices have NaN or inf"),
        ("6", "zero surface area"),
        ("7", "empty file"),
        ("8", "unknown part 'lid'"),
        ("9", "face 4 is labelled both 'body' and 'handle'"),
        ("10", "no labels file"),
    ],
)
def test_bad_psb_files_fail_on_load_with_reason(tmp_path, name, reason):
    items = {i.shape_id: i for i in iter_items(DataConfig(source="psb", path=str(_psb_dir(tmp_path))), seed=0)}
    assert len(items) == 11  # listing never reads the files
    with pytest.raises(ShapeError, match=reason) as err:
        items[f"psb/Cup/{name}"].load()
    assert f"Cup/{name}.off" in str(err.value) or f"Cup/{name}_labels.txt" in str(err.value)


def test_good_psb_style_files_load(tmp_path):
    items = {i.shape_id: i for i in iter_items(DataConfig(source="psb", path=str(_psb_dir(tmp_path))), seed=0)}
    tetra = items["psb/Cup/1"].load()
    assert tetra.part_names == ["body", "handle"] and list(tetra.mesh.face_labels) == [0, 0, 0, 1]
    assert set(np.unique(tetra.labels)) == {0, 1}
    square = items["psb/Cup/11"].load()
    assert len(square.mesh.faces) == 2 and set(np.unique(square.labels)) == {0, 1}


# ---------------------------------------------------------------------------------------
# Procedural and dispatch


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


def test_sources_without_a_file_reader():
    with pytest.raises(ValueError, match="no file reader"):
        iter_items(DataConfig(source="table", path="x"), seed=0)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        iter_items(DataConfig(source="psb", path="/nonexistent/psb"), seed=0)
