"""The embedded procedural corpus: part-labelled shapes built from primitives.

Each category assembles closed triangle primitives (boxes, prisms, surfaces of revolution,
tubes, limb frustums) into a plausible object with per-face part labels, then goes through
``distill.sampling.shape_from_mesh`` like any real mesh. Proportions, part counts, part
styles and poses vary per instance from a generator seeded by ``(seed, category, index)``,
so one shape is reproducible on its own, whichever worker builds it.

Frame: +y up, the object's front towards +z (the camera at azimuth 0 sees the front).

Categories (vocabularies in ``distill.categories.PROCEDURAL_PARTS``):

* ``CATEGORIES``, the default corpus (``furniture``, ``vehicles``): Airplane, Car, Chair,
  Guitar, Lamp, Rocket, Skateboard, Table, in ShapeNetPart's part names and order, so a
  student distilled on them evaluates on ShapeNetPart as is;
* ``PSB_CATEGORIES`` (``vessels``, ``tools``, ``creatures``): Cup, Glasses, Human, Plier,
  Vase, in Labeled PSB's part names and order (made on request, not in the default run).

``ALL_CATEGORIES`` is both; ``distill.vocab.part_mapping`` maps one vocabulary onto another
(e.g. procedural Chair's back/seat/leg/armrest onto PSB's backsupport/support/leg/arm).

One procedural path: the generation stage (``generation.name=procedural``) and the data
source (``data.source=procedural``, ``reader.py``) make the same shapes under the same ids
(``shape_id``), splits (``SPLIT_START``) and quality filters (``generation.filters``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from distill.categories import (
    PROCEDURAL_PARTS,
    PROCEDURAL_PSB_CATEGORIES,
    PROCEDURAL_SNP_CATEGORIES,
    canonical_name,
)
from distill.records import Mesh, Shape
from distill.sampling import derive_seed, shape_from_mesh
from generation.procedural.creatures import build_human
from generation.procedural.furniture import build_chair, build_lamp, build_table
from generation.procedural.primitives import MeshBuilder, box_mesh
from generation.procedural.tools import build_glasses, build_plier
from generation.procedural.vehicles import build_airplane, build_car, build_guitar, build_rocket, build_skateboard
from generation.procedural.vessels import build_cup, build_vase

CATEGORIES = PROCEDURAL_SNP_CATEGORIES
"""The default corpus (ShapeNetPart categories)."""
PSB_CATEGORIES = PROCEDURAL_PSB_CATEGORIES
"""Categories made for Labeled PSB categories, in PSB's part names."""
ALL_CATEGORIES = (*CATEGORIES, *PSB_CATEGORIES)
DEFAULT_COUNT = 24
"""Instances per category when no count is given."""
SPLIT_START = {"all": 0, "train": 0, "val": 500_000, "test": 1_000_000}
"""The corpus is unbounded, so its splits are disjoint ranges of instance indices rather
than halves of one list: ``all``/``train`` make instances 0..n−1, ``val`` and ``test``
held-out instances (other indices, hence other seeds and proportions)."""

_BUILDERS: dict[str, Callable[[np.random.Generator], tuple[Mesh, dict[str, Any]]]] = {
    "Airplane": build_airplane,
    "Car": build_car,
    "Chair": build_chair,
    "Guitar": build_guitar,
    "Lamp": build_lamp,
    "Rocket": build_rocket,
    "Skateboard": build_skateboard,
    "Table": build_table,
    "Cup": build_cup,
    "Glasses": build_glasses,
    "Human": build_human,
    "Plier": build_plier,
    "Vase": build_vase,
}

__all__ = [
    "ALL_CATEGORIES",
    "CATEGORIES",
    "DEFAULT_COUNT",
    "PROCEDURAL_PARTS",
    "PSB_CATEGORIES",
    "SPLIT_START",
    "MeshBuilder",
    "box_mesh",
    "instance_rng",
    "make_mesh",
    "make_shape",
    "shape_id",
    "split_indices",
]


def shape_id(category: str, index: int) -> str:
    """The id of instance ``index`` of ``category`` (canonical spelling): ``procedural/<Category>/<index:05d>``."""
    return f"procedural/{category}/{index:05d}"


def split_indices(split: str, count: int, start: int = 0) -> range:
    """The instance indices of ``split``: ``count`` of them from ``SPLIT_START[split] + start``."""
    if split not in SPLIT_START:
        raise ValueError(f"split={split!r} is not one of {', '.join(SPLIT_START)}")
    first = SPLIT_START[split] + start
    return range(first, first + count)


def instance_rng(seed: int, category: str, index: int) -> np.random.Generator:
    """The generator of one instance: a function of (seed, category, index) only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(category.encode()), int(index)])


def make_mesh(category: str, index: int, seed: int) -> tuple[Mesh, dict[str, Any]]:
    """The labelled mesh of instance ``index`` of ``category`` (unnormalised, +y up) and its parameters."""
    name = canonical_name(category, list(_BUILDERS), "procedural category")
    if index < 0:
        raise ValueError(f"index={index} must be >= 0")
    mesh, params = _BUILDERS[name](instance_rng(seed, name, index))
    clean = {k: (round(float(v), 4) if isinstance(v, float | np.floating) else v) for k, v in params.items()}
    return mesh, {k: (int(v) if isinstance(v, np.integer) else v) for k, v in clean.items()}


def make_shape(category: str, index: int, seed: int, num_points: int = 2048) -> Shape:
    """Instance ``index`` of procedural ``category`` as a normalised, labelled ``Shape``.

    category: one of ``ALL_CATEGORIES`` (case-insensitive) → a Shape with ``num_points``
    surface samples, per-point labels, the mesh, source ``procedural`` and shape id
    ``shape_id(category, index)``; meta holds seed, index and the instance's
    parameters.
    """
    name = canonical_name(category, list(_BUILDERS), "procedural category")
    mesh, params = make_mesh(name, index, seed)
    sid = shape_id(name, index)
    meta = {"seed": int(seed), "index": int(index), "params": params}
    return shape_from_mesh(
        sid, name, PROCEDURAL_PARTS[name], mesh, num_points, derive_seed(seed, sid), "procedural", meta
    )
