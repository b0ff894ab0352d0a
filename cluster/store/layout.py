"""How a run's tables are partitioned, and the pure decisions that plan work over them.

``{run}/shapes/``
    parts of at most ``SHAPE_PART_SIZE`` shapes, one category a part where the writer
    can (ingest and generation group by category), so a student reads only the parts of
    its categories. Summary: ``{"shapes": n, "categories": {category: n}}``.
``{run}/knowledge/round_0/``
    co-partitioned with the shapes: a knowledge part holds the units of shapes of *one*
    shape part and is named after it, ``<shape part stem>--<digest>.parquet`` (the digest
    of the shape ids it finishes: a retried write makes the same name). Usually one per
    shape part; a GPU teacher pool may write a shape part in several pieces. Joining
    units to shapes is a name lookup, never a shuffle. Summary: ``{"shape_part": ...,
    "with_units": {category: n}, "units": n}``.
``{run}/knowledge/round_{k}/{student}/`` (k ≥ 1)
    backward distillation's scores only: one part per round-0 knowledge part, same name,
    a row per shape (``shape_id``, ``score``: one float per unit, in round 0's order).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SHAPE_PART_SIZE = 256
"""Most shapes a shape part holds: the unit of work of every stage after ingest (an
extraction actor call, a training read, a re-scoring call). ~10 MB of Parquet at 2048
points with meshes; a stopped stage redoes at most one part."""


def shapes_per_part(todo: int, workers: int = 1, min_parts_per_worker: int = 4) -> int:
    """Shapes per part for a writer with ``todo`` shapes: at most ``SHAPE_PART_SIZE``, and
    small enough that ``workers`` each get ``min_parts_per_worker`` parts (so a small run
    still spreads over the cluster and lands on storage as it goes)."""
    if todo < 0 or workers < 1 or min_parts_per_worker < 1:
        raise ValueError(f"todo={todo} must be >= 0, workers={workers} and min_parts_per_worker >= 1")
    return max(1, min(SHAPE_PART_SIZE, math.ceil(todo / (workers * min_parts_per_worker))))


def shape_summary(shapes: list[Any]) -> dict[str, Any]:
    """A shape part's manifest entry: its row count, shapes and part names per category."""
    cats: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    for s in shapes:
        cats[s.category] = cats.get(s.category, 0) + 1
        names.setdefault(s.category, list(s.part_names))
    return {"shapes": len(shapes), "categories": dict(sorted(cats.items())), "part_names": names}


def summarise_shape_part(storage: Any, table_dir: str, name: str) -> dict[str, Any]:
    """The summary of a shape part whose footer has none (a table from another tool, e.g.
    ``data.source=table``): read from its ``category`` and ``part_names`` columns."""
    table = storage.read_part(table_dir, name, ["category", "part_names"])
    cats: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    for c, p in zip(table.column("category").to_pylist(), table.column("part_names").to_pylist()):
        cats[c] = cats.get(c, 0) + 1
        names.setdefault(c, list(p))
    return {"shapes": table.num_rows, "categories": dict(sorted(cats.items())), "part_names": names}


def shapes_manifest(storage: Any, shapes_dir: str) -> dict[str, dict[str, Any]]:
    """The manifest of a shape table (parts without a summary are summarised once)."""
    return storage.manifest(shapes_dir, fill=summarise_shape_part)


def category_parts(shapes_manifest: dict[str, dict[str, Any]], where: str = "") -> dict[str, tuple[str, ...]]:
    """``{category: its part names}`` over a shape table's manifest; parts must agree."""
    out: dict[str, tuple[str, ...]] = {}
    for part, summary in sorted(shapes_manifest.items()):
        if "part_names" not in summary:
            raise ValueError(
                f"{where}{part} has no part names in its summary: the table was written by an older release; "
                "ingest it again into a new run"
            )
        for c, names in summary["part_names"].items():
            if out.setdefault(c, tuple(names)) != tuple(names):
                raise ValueError(f"{where}{part}: {c!r} shapes name parts {list(names)}, others {list(out[c])}")
    return dict(sorted(out.items()))


def _stem(part: str) -> str:
    if not part.endswith(".parquet"):
        raise ValueError(f"part name {part!r} does not end in .parquet")
    return part.removesuffix(".parquet")


def part_name(ids: Iterable[str]) -> str:
    """A shape part's file name from the ids it records as done: a retried task rewrites
    the same file, and a run's parts (and so its training order) do not depend on chance."""
    digest = hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def knowledge_part_name(shape_part: str, shape_ids: Iterable[str]) -> str:
    """The knowledge part finishing ``shape_ids`` of ``shape_part`` (deterministic)."""
    digest = hashlib.blake2b(json.dumps(sorted(set(shape_ids))).encode(), digest_size=6).hexdigest()
    return f"{_stem(shape_part)}--{digest}.parquet"


def shape_part_of(knowledge_part: str) -> str:
    """The shape part a knowledge part belongs to (inverse of ``knowledge_part_name``)."""
    stem, sep, _ = _stem(knowledge_part).rpartition("--")
    if not sep or not stem:
        raise ValueError(f"{knowledge_part!r} is not a knowledge part name (<shape part stem>--<digest>.parquet)")
    return f"{stem}.parquet"


def group_knowledge(knowledge_parts: Iterable[str]) -> dict[str, list[str]]:
    """``{shape part: its knowledge parts}``, sorted."""
    out: dict[str, list[str]] = {}
    for name in knowledge_parts:
        out.setdefault(shape_part_of(name), []).append(name)
    return {k: sorted(v) for k, v in sorted(out.items())}


def part_complete(shape_summary: dict[str, Any], knowledge_summaries: list[dict[str, Any]]) -> bool:
    """Whether the knowledge parts of a shape part finish all of its shapes (their done
    counts — units written or rejected — add up to the part's shapes; pieces never overlap)."""
    return sum(int(k.get("done", 0)) for k in knowledge_summaries) >= int(shape_summary.get("shapes", 0))


def unfinished_parts(
    shapes_manifest: dict[str, dict[str, Any]], knowledge_manifest: dict[str, dict[str, Any]]
) -> list[str]:
    """The shape parts whose shapes are not all extracted yet, in table order."""
    knowledge = group_knowledge(knowledge_manifest)
    return [
        part
        for part, summary in sorted(shapes_manifest.items())
        if not part_complete(summary, [knowledge_manifest[k] for k in knowledge.get(part, [])])
    ]


@dataclass(frozen=True)
class PartItem:
    """One unit of work after extraction: a shape part and its knowledge parts."""

    shape_part: str
    knowledge_parts: tuple[str, ...]
    categories: tuple[str, ...] = ()
    with_units: int = 0
    """Shapes of ``categories`` in this part that have at least one unit."""

    def to_row(self) -> dict[str, Any]:
        return {"shape_part": self.shape_part, "knowledge_parts": json.dumps(list(self.knowledge_parts))}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PartItem:
        return cls(str(row["shape_part"]), tuple(json.loads(str(row["knowledge_parts"]))))


@dataclass
class PartPlan:
    """The parts a stage works on for some categories (``plan_parts``)."""

    items: list[PartItem] = field(default_factory=list)
    shapes: int = 0
    with_units: int = 0


def plan_parts(
    shapes_manifest: dict[str, dict[str, Any]],
    knowledge_manifest: dict[str, dict[str, Any]],
    categories: Iterable[str] | None,
    where: str = "",
) -> PartPlan:
    """The shape parts holding any of ``categories`` (None: all), each with its knowledge.

    Raises ``ValueError`` naming the parts when knowledge is missing for a shape part
    (extraction did not finish: re-run it) or a knowledge part has no shape part (the
    tables do not belong together).
    """
    wanted = None if categories is None else set(categories)
    knowledge = group_knowledge(knowledge_manifest)
    orphans = sorted(set(knowledge) - set(shapes_manifest))
    if orphans:
        names = [k for o in orphans[:3] for k in knowledge[o]]
        raise ValueError(
            f"{where}knowledge parts {names} belong to shape parts {orphans[:3]} that do not exist: the knowledge "
            "was extracted from another shape table; extract again into an empty knowledge folder"
        )
    plan = PartPlan()
    missing = []
    for part, summary in sorted(shapes_manifest.items()):
        cats = {str(c): int(n) for c, n in dict(summary.get("categories", {})).items()}
        mine = sorted(c for c in cats if wanted is None or c in wanted)
        if not mine:
            continue
        if not part_complete(summary, [knowledge_manifest[k] for k in knowledge.get(part, [])]):
            missing.append(part)
            continue
        with_units = sum(
            int(knowledge_manifest[k].get("with_units", {}).get(c, 0)) for k in knowledge[part] for c in mine
        )
        plan.items.append(PartItem(part, tuple(knowledge[part]), tuple(mine), with_units))
        plan.shapes += sum(cats[c] for c in mine)
        plan.with_units += with_units
    if missing:
        raise ValueError(
            f"{where}shape parts {missing[:5]} ({len(missing)} in all) have no knowledge yet: run jobs/extract.py "
            "(it resumes where it stopped)"
        )
    return plan
