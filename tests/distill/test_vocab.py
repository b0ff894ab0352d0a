"""Vocabularies across datasets (distill/vocab.py) and mixtures of sources (data.source=mix)."""

from __future__ import annotations

import numpy as np
import pytest

import generation  # noqa: F401 - registers the procedural reader the mixtures below read
from cluster.config import load_config
from distill.categories import PROCEDURAL_PARTS, PSB_PARTS, part_names_for
from distill.config import ConfigError, DataConfig, MixEntry
from distill.readers import SourceItem, iter_items
from distill.readers.mix import interleave
from distill.records import Mesh, Shape
from distill.vocab import (
    common_vocabulary,
    concept_category,
    dataset_category,
    part_mapping,
    prompt_words,
    relabel,
    to_vocabulary,
)
from tests.conftest import shared_data


def test_chair_psb_to_shapenetpart_is_a_bijection():
    m = part_mapping("Chair", "psb", "shapenetpart")
    assert m.source_parts == ("arm", "backsupport", "leg", "support")
    assert m.common == ("back", "seat", "leg", "armrest")
    # arm → armrest (3), backsupport → back (0), leg → leg (2), support → seat (1).
    assert m.source_to_common == (3, 0, 2, 1)
    assert m.target_to_common == (0, 1, 2, 3)
    assert m.describe() == "Chair psb→shapenetpart: arm→armrest, backsupport→back, support→seat"


def test_airplane_stabilizer_and_rudder_are_the_tail():
    m = part_mapping("Airplane", "psb", "procedural")
    assert m.common == ("body", "wing", "tail", "engine")
    assert dict(zip(m.source_parts, m.source_to_common)) == {
        "body": 0,
        "rudder": 2,
        "stabilizer": 2,
        "wing": 1,
        "engine": 3,
    }


def test_table_drawer_and_support_are_the_top_and_mug_is_cup():
    common, maps = common_vocabulary("Table", ["procedural", "psb"])
    assert common == ("tabletop", "leg")
    assert maps["procedural"] == (0, 1, 0) and maps["psb"] == (1, 0)
    assert dataset_category("Cup", "shapenetpart") == "Mug" and concept_category("mug") == "Cup"
    m = part_mapping("Mug", "shapenetpart", "psb")
    assert m.common == ("body", "handle") and m.source_to_common == (1, 0)


def test_new_procedural_categories_speak_psb():
    for c in ("Cup", "Glasses", "Human", "Plier", "Vase"):
        assert PROCEDURAL_PARTS[c] == PSB_PARTS[c]
        assert part_mapping(c, "procedural", "psb").describe().endswith("identity")
    assert part_names_for("Glasses", source="procedural") == ["lens", "middle", "skeleton"]
    assert prompt_words("Chair", "backsupport") == "back" and prompt_words("Cup", "handle") == "handle"


def test_mapping_errors_name_the_input():
    with pytest.raises(ValueError, match="dataset='coseg'"):
        part_mapping("Chair", "coseg", "psb")
    with pytest.raises(ValueError, match="unknown shapenetpart category 'Human'"):
        part_mapping("Human", "psb", "shapenetpart")


def _shape(source: str, category: str, parts: list[str], labels: list[int]) -> Shape:
    pts = np.random.default_rng(0).normal(size=(len(labels), 3)).astype(np.float32)
    mesh = Mesh(np.eye(3, dtype=np.float32), np.array([[0, 1, 2]], np.int32), np.array([labels[0]], np.int32))
    return Shape(f"{source}/{category}/1", category, parts, pts, labels=np.array(labels), source=source, mesh=mesh)


def test_to_vocabulary_moves_points_and_faces():
    s = _shape("psb", "Airplane", PSB_PARTS["Airplane"], [0, 1, 2, 3, 4, -1])
    out = to_vocabulary(s, ["procedural", "psb"])
    assert out.part_names == ["body", "wing", "tail", "engine"]
    assert out.labels.tolist() == [0, 2, 2, 1, 3, -1]
    assert out.mesh.face_labels.tolist() == [0]
    with pytest.raises(ValueError, match="to_common has"):
        relabel(s, (0, 1), ("a", "b"))
    files = _shape("files", "Airplane", ["x"], [0])
    with pytest.raises(ValueError, match="no vocabulary to map"):
        to_vocabulary(files, ["procedural"])


def test_interleave_keeps_the_ratio_in_every_prefix():
    a = [SourceItem(f"a/{i}", "C", "", lambda: None) for i in range(2)]
    b = [SourceItem(f"b/{i}", "C", "", lambda: None) for i in range(6)]
    ids = [i.shape_id for i in interleave([a, b])]
    assert ids == ["b/0", "a/0", "b/1", "b/2", "b/3", "a/1", "b/4", "b/5"]


def test_mix_config_checks():
    with pytest.raises(ConfigError, match="data.source=mix needs data.mix"):
        DataConfig(source="mix")
    with pytest.raises(ConfigError, match="data.mix\\[\\].source"):
        MixEntry(source="table")
    with pytest.raises(ConfigError, match="data.vocabulary"):
        DataConfig(vocabulary=["coseg"])


def test_mix_of_procedural_splits_and_repeated_ids():
    cfg = load_config(
        [
            "data.source=mix",
            "data.categories=[Chair]",
            "data.mix=[{source: procedural, per_category: 3}, {source: procedural, split: test, per_category: 1}]",
        ]
    )
    ids = [i.shape_id for i in iter_items(cfg.data, 0)]
    assert ids == [
        "procedural/Chair/00000",
        "procedural/Chair/00001",
        "procedural/Chair/1000000",
        "procedural/Chair/00002",
    ]
    same = DataConfig(source="mix", mix=[MixEntry(per_category=2), MixEntry(per_category=1)], categories=["Chair"])
    with pytest.raises(ValueError, match="repeats shape id 'procedural/Chair/00000'"):
        iter_items(same, 0)


def test_mix_of_psb_and_procedural_under_one_vocabulary():
    psb = shared_data("labeled_psb")
    cfg = load_config(
        [
            "data.source=mix",
            "data.categories=[Chair,Airplane]",
            "data.vocabulary=[procedural,psb]",
            "data.num_points=256",
            f"data.mix=[{{source: psb, path: {psb}, split: train}}, {{source: procedural, per_category: 10}}]",
        ]
    )
    items = list(iter_items(cfg.data, 0))
    assert len(items) == 2 * 5 + 2 * 10
    assert len({i.shape_id for i in items}) == len(items)
    # 1 real : 2 generated in every prefix of the listing.
    first = [i.shape_id.split("/")[0] for i in items[:6]]
    assert first.count("psb") == 2 and first.count("procedural") == 4
    shapes = [i.load() for i in items if i.category == "Chair"][:4]
    assert {tuple(s.part_names) for s in shapes} == {("back", "seat", "leg", "armrest")}
    assert {s.source for s in shapes} == {"psb", "procedural"}
