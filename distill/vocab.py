"""Vocabularies across datasets: prompt words, category aliases and part mappings.

The part lists themselves are ``distill.categories``' tables (``TABLES``: ``shapenetpart``,
``psb``, ``procedural``). This module adds, in one place:

* ``PROMPT_WORDS``: what a teacher should be asked for a part whose dataset name is not a
  plain word (PSB ``backsupport`` → "back", Chair ``support`` → "seat");
* ``CATEGORY_ALIASES``: the same category under another name in another dataset
  (ShapeNetPart ``Mug`` is PSB ``Cup``);
* ``CONCEPTS``: per category and dataset, each part name → its *concept*, the name shared
  across datasets (PSB Chair ``backsupport`` → ``back``; PSB Airplane ``stabilizer`` and
  ``rudder`` → ``tail``). Names not listed are their own concept.

``part_mapping(category, source, target)`` turns two vocabularies into one explicit,
printable mapping onto their common concepts (the coarser of the two wherever one is finer),
and ``relabel`` moves a shape's labels onto it. A student distilled under ``source``'s
names is scored on ``target``'s shapes by relabelling both to the common vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from distill.categories import TABLES, canonical_name
from distill.records import Mesh, Shape

PROMPT_WORDS: dict[str, dict[str, dict[str, str]]] = {
    "psb": {
        "Chair": {"backsupport": "back", "support": "seat", "arm": "armrest"},
        "Table": {"support": "tabletop"},
        "Armadillo": {
            "lowerArm": "lower arm",
            "upperArm": "upper arm",
            "lowerLeg": "lower leg",
            "upperLeg": "upper leg",
        },
        "Human": {"lowerarm": "lower arm", "upperarm": "upper arm", "lowerleg": "lower leg", "upperleg": "upper leg"},
        "FourLeg": {"earhorn": "ear or horn"},
        "Glasses": {"skeleton": "frame", "middle": "bridge"},
        "Plier": {"center": "pivot", "edge": "jaw"},
        "Vase": {"top": "neck"},
        "Bust": {"background": "base"},
        "Hand": {"hand": "palm", "finger1": "finger", "finger2": "finger", "finger3": "finger", "finger4": "finger"},
        "Bearing": {
            "base1": "base",
            "base2": "base",
            "bigroller": "big roller",
            "mediumroller": "medium roller",
            "smallroller": "small roller",
            "tinyroller": "tiny roller",
        },
        "Mech": {
            "bigbox": "big box",
            "smallbox": "small box",
            "bigcylinder": "big cylinder",
            "mediumcylinder": "medium cylinder",
            "smallcylinder": "small cylinder",
        },
    },
}
"""dataset → category → part name → prompt words (unlisted parts: the name itself)."""

CATEGORY_ALIASES: dict[str, dict[str, str]] = {
    "Cup": {"shapenetpart": "Mug", "psb": "Cup", "procedural": "Cup"},
}
"""Concept category → its name per dataset, where the names differ."""

CONCEPTS: dict[str, dict[str, dict[str, str]]] = {
    "Chair": {"psb": {"backsupport": "back", "support": "seat", "arm": "armrest"}},
    "Airplane": {"psb": {"stabilizer": "tail", "rudder": "tail"}},
    # PSB's table "support" is the top; a ShapeNetPart drawer hangs under the top.
    "Table": {
        "psb": {"support": "tabletop"},
        "shapenetpart": {"drawer": "tabletop"},
        "procedural": {"drawer": "tabletop"},
    },
    "Cup": {"shapenetpart": {"cup": "body"}},
}
"""Concept category → dataset → part name → concept (unlisted names: themselves)."""


def dataset_category(category: str, dataset: str) -> str:
    """The name ``dataset`` gives ``category`` (an alias or the name itself).

    Raises ``ValueError`` naming the dataset when it has no such category.
    """
    if dataset not in TABLES:
        raise ValueError(f"dataset={dataset!r} unknown; known: {', '.join(sorted(TABLES))}")
    for concept, names in CATEGORY_ALIASES.items():
        if category.casefold() in {concept.casefold(), *(n.casefold() for n in names.values())}:
            category = names.get(dataset, concept)
            break
    return canonical_name(category, list(TABLES[dataset]), f"{dataset} category")


def concept_category(category: str) -> str:
    """The cross-dataset name of ``category`` (``Mug`` → ``Cup``); others unchanged."""
    for concept, names in CATEGORY_ALIASES.items():
        if category.casefold() in {concept.casefold(), *(n.casefold() for n in names.values())}:
            return concept
    return category


def prompt_words(category: str, part: str, dataset: str = "psb") -> str:
    """The words a teacher is prompted with for ``part`` of ``category`` in ``dataset``."""
    return PROMPT_WORDS.get(dataset, {}).get(category, {}).get(part, part)


def concept_of(category: str, part: str, dataset: str) -> str:
    """The concept (cross-dataset name) of ``part`` of ``category`` in ``dataset``."""
    return CONCEPTS.get(concept_category(category), {}).get(dataset, {}).get(part, part)


@dataclass(frozen=True)
class PartMapping:
    """Two vocabularies of one category mapped onto their common concepts.

    source_parts / target_parts: the two label orders · common: the common vocabulary's
    label order (the target's concepts, in target order) · source_to_common /
    target_to_common: (P_source,) / (P_target,) int arrays of common labels, −1 for a part
    the other vocabulary has no concept for (its points are left unscored).
    """

    category: str
    source: str
    target: str
    source_parts: tuple[str, ...]
    target_parts: tuple[str, ...]
    common: tuple[str, ...]
    source_to_common: tuple[int, ...]
    target_to_common: tuple[int, ...]

    def describe(self) -> str:
        """One line: ``Chair psb→shapenetpart: backsupport→back, ...`` (only names that change)."""

        def side(parts: tuple[str, ...], to: tuple[int, ...]) -> list[str]:
            return [
                f"{p}→{self.common[k] if k >= 0 else '∅'}" for p, k in zip(parts, to) if k < 0 or p != self.common[k]
            ]

        changes = side(self.source_parts, self.source_to_common) + [
            f"[{self.target}] {c}" for c in side(self.target_parts, self.target_to_common)
        ]
        return f"{self.category} {self.source}→{self.target}: " + (", ".join(changes) or "identity")


def common_vocabulary(
    category: str, datasets: list[str] | tuple[str, ...]
) -> tuple[tuple[str, ...], dict[str, tuple[int, ...]]]:
    """The concepts of ``category`` that every one of ``datasets`` has, and each dataset's map onto them.

    category: any dataset's name of it · datasets: keys of ``TABLES``, the first giving the
    order → (common names, ordered as the first dataset's parts; {dataset: (P_d,) common
    label of each of its parts, −1 where the concept is not shared}). Raises
    ``ValueError`` for no datasets, an unknown dataset or category, or nothing shared.
    """
    if not datasets:
        raise ValueError("common_vocabulary: no datasets")
    concept = concept_category(category)
    parts = {d: tuple(TABLES[d][dataset_category(concept, d)]) for d in dict.fromkeys(datasets)}
    concepts = {d: [concept_of(concept, p, d) for p in ps] for d, ps in parts.items()}
    shared = set.intersection(*(set(c) for c in concepts.values()))
    common = tuple(dict.fromkeys(c for c in concepts[datasets[0]] if c in shared))
    if not common:
        raise ValueError(f"category {category!r}: the vocabularies of {list(parts)} share no concept ({parts})")
    index = {c: k for k, c in enumerate(common)}
    return common, {d: tuple(index.get(c, -1) for c in cs) for d, cs in concepts.items()}


def part_mapping(category: str, source: str, target: str) -> PartMapping:
    """The explicit mapping between ``source``'s and ``target``'s vocabularies of ``category``.

    category: any dataset's name of it (``Mug`` and ``Cup`` alike) · source, target: keys
    of ``distill.categories.TABLES``. Parts are matched by concept (``CONCEPTS``), the
    common vocabulary named and ordered as the target's; a concept only one side has maps
    to −1. Raises ``ValueError`` naming the dataset or category when either vocabulary is
    unknown, or when the two share no concept.
    """
    concept = concept_category(category)
    s_cat, t_cat = dataset_category(concept, source), dataset_category(concept, target)
    s_parts, t_parts = tuple(TABLES[source][s_cat]), tuple(TABLES[target][t_cat])
    s_con = [concept_of(concept, p, source) for p in s_parts]
    t_con = [concept_of(concept, p, target) for p in t_parts]
    common = tuple(dict.fromkeys(c for c in t_con if c in set(s_con)))
    if not common:
        raise ValueError(
            f"category {category!r}: {source} parts {s_parts} and {target} parts {t_parts} share no concept"
        )
    index = {c: k for k, c in enumerate(common)}
    return PartMapping(
        concept,
        source,
        target,
        s_parts,
        t_parts,
        common,
        tuple(index.get(c, -1) for c in s_con),
        tuple(index.get(c, -1) for c in t_con),
    )


def to_vocabulary(shape: Shape, datasets: list[str] | tuple[str, ...]) -> Shape:
    """``shape`` relabelled onto ``common_vocabulary(shape.category, datasets)``.

    Its parts are read as names of ``shape.source``'s dataset (listed or not); a part whose
    concept is not shared becomes unlabelled (−1). A shape from a source without a part
    table (files, generated) must already carry the common names, else ``ValueError``.
    """
    common, _ = common_vocabulary(shape.category, datasets)
    if shape.source not in TABLES:
        if tuple(shape.part_names) != common:
            raise ValueError(
                f"shape {shape.shape_id}: source {shape.source!r} has no vocabulary to map {shape.part_names} "
                f"onto {list(common)}"
            )
        return shape
    index = {c: k for k, c in enumerate(common)}
    lut = tuple(index.get(concept_of(shape.category, p, shape.source), -1) for p in shape.part_names)
    return relabel(shape, lut, common)


def relabel(shape: Shape, to_common: tuple[int, ...] | np.ndarray, common: tuple[str, ...] | list[str]) -> Shape:
    """``shape`` with its labels (points and mesh faces) moved onto the ``common`` vocabulary.

    to_common: (P,) common label of each of the shape's P parts (−1: unlabelled) · common:
    the new part names. Raises ``ValueError`` when ``to_common`` does not have one entry
    per part of the shape or points outside ``common``.
    """
    lut = np.asarray(to_common, np.int64)
    if lut.shape != (shape.num_parts,):
        raise ValueError(f"to_common has {lut.shape} entries; shape {shape.shape_id} has {shape.num_parts} parts")
    if lut.max(initial=-1) >= len(common):
        raise ValueError(f"to_common {lut.tolist()} points outside the {len(common)} common parts")

    def move(labels: np.ndarray | None) -> np.ndarray | None:
        if labels is None:
            return None
        out = np.full(labels.shape, -1, labels.dtype)
        ok = labels >= 0
        out[ok] = lut[labels[ok]]
        return out

    mesh = shape.mesh
    if mesh is not None and mesh.face_labels is not None:
        mesh = Mesh(mesh.vertices, mesh.faces, move(mesh.face_labels))
    return replace(shape, part_names=list(common), labels=move(shape.labels), mesh=mesh)
