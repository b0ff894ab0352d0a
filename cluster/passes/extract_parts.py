"""Extraction's unit of work: one shape part → its co-partitioned knowledge.

Whichever process extracts a shape part also writes its knowledge (``cluster.store.layout``):
``write_piece`` writes the units of some of the part's shapes as one knowledge part
named ``<shape part stem>--<digest of their ids>`` whose done ids are exactly those
shapes (rejected ones included), rejects first. ``PartExtractor`` reads a shape part,
skips the shapes its earlier pieces finished, and renders, teaches and back-projects the
rest in pieces of at most ``PIECE_SHAPES``: one process for the local driver and each
actor of the fused Ray layout. Nothing returns to the driver but a summary row per piece.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cluster.store.layout import knowledge_part_name, shape_part_of
from cluster.store.rejects import write_rejects
from cluster.store.storage import Storage
from distill.config import RenderConfig, TeacherConfig
from distill.extract import render, teach, to_units
from distill.records import KnowledgeUnits, Shape, row_to_shape, units_to_table
from distill.teachers import build_teacher
from distill.teachers.base import Teacher

log = logging.getLogger(__name__)

STAGE = "extract"
PIECE_SHAPES = 32
"""Most shapes per knowledge piece: a stopped extraction redoes at most this many."""

TeacherFactory = Callable[[TeacherConfig, int], Teacher]
"""``(teacher config, seed) → teacher``; ``build_teacher`` unless a test injects one."""

Result = tuple[str, "KnowledgeUnits | None", str, str]
"""``(shape id, units or None, error, category)`` of one extracted shape."""


def default_factory(cfg: TeacherConfig, seed: int) -> Teacher:
    return build_teacher(cfg, seed=seed)


def reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def done_in_part(storage: Storage, knowledge_dir: str, shape_part: str) -> set[str]:
    """Shape ids of ``shape_part`` that earlier knowledge pieces finished (their footers)."""
    done: set[str] = set()
    for name in storage.list_parts(knowledge_dir):
        if shape_part_of(name) == shape_part:
            try:
                done.update(storage.part_footer(knowledge_dir, name)[0])
            except Exception as e:  # noqa: BLE001 - an unreadable piece is redone
                storage.quarantine(knowledge_dir, name, e)
    return done


def write_piece(
    storage: Storage, run: str, knowledge_dir: str, shape_part: str, results: list[Result]
) -> dict[str, Any] | None:
    """Rejects, then one knowledge piece of ``results`` → its ``PIECE_SCHEMA`` row."""
    if not results:
        return None
    rejects = [(sid, err) for sid, u, err, _ in results if u is None]
    # Rejects first: a crash between the two writes redoes (and re-rejects) the shape
    # rather than marking it done without its reason.
    write_rejects(storage, run, STAGE, rejects)
    with_units: dict[str, int] = {}
    for _, u, _, category in results:
        if u is not None and len(u):
            with_units[category] = with_units.get(category, 0) + 1
    table = units_to_table([u for _, u, _, _ in results if u is not None])
    ids = [sid for sid, _, _, _ in results]
    name = knowledge_part_name(shape_part, ids)
    summary = {"shape_part": shape_part, "with_units": dict(sorted(with_units.items())), "units": table.num_rows}
    storage.write_part(knowledge_dir, table, done_ids=ids, name=name, summary=summary)
    new = len(results) - len(rejects)
    return {"piece": name, "new": new, "rejected": len(rejects), "units": table.num_rows}


def extract_shape(shape: Shape, render_cfg: RenderConfig, teacher: Teacher) -> Result:
    """Render, teach and back-project one shape; a failure rejects that shape only."""
    try:
        views = render(shape, render_cfg)
    except Exception as e:  # noqa: BLE001 - one shape's failure rejects that shape only
        return shape.shape_id, None, f"render: {reason(e)}", shape.category
    try:
        return shape.shape_id, to_units(views, teach(teacher, views, shape), shape, teacher), "", shape.category
    except Exception as e:  # noqa: BLE001
        return shape.shape_id, None, f"teacher: {reason(e)}", shape.category


class PartExtractor:
    """Extracts whole shape parts with one teacher (loaded once): ``(part) → rows``."""

    def __init__(
        self,
        storage: Storage,
        run: str,
        shapes_dir: str,
        knowledge_dir: str,
        render_cfg: RenderConfig,
        teacher: Teacher,
        on_shape: Callable[[], None] | None = None,
    ) -> None:
        self.storage, self.run, self.shapes_dir, self.knowledge_dir = storage, run, shapes_dir, knowledge_dir
        self.render_cfg, self.teacher, self.on_shape = render_cfg, teacher, on_shape

    def __call__(self, shape_part: str) -> list[dict[str, Any]]:
        done = done_in_part(self.storage, self.knowledge_dir, shape_part)
        table = self.storage.read_part(self.shapes_dir, shape_part)
        rows_out: list[dict[str, Any]] = []
        results: list[Result] = []
        for i in range(table.num_rows):
            row = table.slice(i, 1).to_pylist()[0]  # one shape (and its mesh) as Python objects at a time
            sid = str(row["shape_id"])
            if sid in done:
                continue
            done.add(sid)
            try:
                shape = row_to_shape(row)
            except Exception as e:  # noqa: BLE001 - one shape's failure rejects that shape only
                results.append((sid, None, f"render: {reason(e)}", str(row.get("category"))))
            else:
                results.append(extract_shape(shape, self.render_cfg, self.teacher))
            if self.on_shape is not None:
                self.on_shape()
            if len(results) >= PIECE_SHAPES:
                rows_out.append(write_piece(self.storage, self.run, self.knowledge_dir, shape_part, results))  # type: ignore[arg-type]
                results = []
        row = write_piece(self.storage, self.run, self.knowledge_dir, shape_part, results)
        if row is not None:
            rows_out.append(row)
        return rows_out
