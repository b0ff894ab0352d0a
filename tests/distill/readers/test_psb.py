"""The Labeled PSB reader (distill/readers/psb.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from distill.categories import PSB_PARTS
from distill.config import DataConfig
from distill.readers import iter_items
from distill.readers.psb import read_off, read_psb_labels
from distill.records import ShapeError
from tests.conftest import shared_data


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


def test_psb_airplane_with_an_engine_is_read(tmp_path):
    # A tetrahedron labelled with the documented part this sample's airplanes lack.
    folder = tmp_path / "Airplane"
    folder.mkdir()
    (folder / "1.off").write_text("OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 2 1\n3 0 1 3\n3 0 3 2\n3 1 2 3\n")
    (folder / "1_labels.txt").write_text("body\n1 2\nengine\n3 4\n")
    shape = next(iter_items(DataConfig(source="psb", path=str(tmp_path), num_points=64), 0)).load()
    assert shape.part_names[4] == "engine"
    assert set(np.unique(shape.labels)) == {0, 4}


def test_psb_listing_splits_and_filters():
    root = str(shared_data("labeled_psb"))
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
    with pytest.raises(ValueError, match="unknown psb category 'Sofa' — use one of: Airplane, Ant"):
        iter_items(DataConfig(source="psb", path=root, categories=["Sofa"]), seed=0)


def test_psb_all_shapes_read_with_labels_on_their_faces():
    root = str(shared_data("labeled_psb"))
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
    root = str(shared_data("labeled_psb"))
    data = DataConfig(source="psb", path=root, categories=["Cup"], per_category=1)
    a = next(iter_items(data, seed=0)).load()
    b = next(iter_items(data, seed=0)).load()
    c = next(iter_items(data, seed=1)).load()
    assert np.array_equal(a.points, b.points) and not np.array_equal(a.points, c.points)


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
