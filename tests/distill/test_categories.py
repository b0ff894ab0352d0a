"""The category tables (distill/categories.py) against the shared data's metadata."""

from __future__ import annotations

import json

import pytest

from distill.categories import PSB_PARTS, SHAPENETPART_PARTS, SHAPENETPART_PID_START, part_names_for
from tests.conftest import shared_data


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
    root = shared_data("shapenetpart")
    starts = json.loads((root / "shapenet_pid_start.json").read_text())
    assert {k.lower(): v for k, v in SHAPENETPART_PID_START.items()} == starts
    meta = json.loads((root / "shapenet-part-order_meta.json").read_text())
    for name, parts in meta.items():
        assert SHAPENETPART_PARTS[name][: len(parts)] == parts


def test_psb_table_covers_the_label_files_and_the_documented_names():
    root = shared_data("labeled_psb")
    for category, parts in PSB_PARTS.items():
        used = set()
        for f in (root / category).glob("*_labels.txt"):
            lines = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
            used |= set(lines[0::2])
        # The names these meshes use, sorted, first; documented names they lack come after.
        assert parts[: len(used)] == sorted(used), category
    # Labeled PSB documents an engine part for airplanes (3 of the full set's 20 meshes).
    assert PSB_PARTS["Airplane"] == ["body", "rudder", "stabilizer", "wing", "engine"]
