"""The extraction stage's plan and local driver (the Ray driver is ``cluster.extract_ray``).

Work is planned per *shape part* from the tables' manifests (``plan``): the unfinished
shape parts. ``extract_local`` runs ``PartExtractor`` (``cluster.extract_parts``) over them
in this process, one part in memory at a time; whoever extracts a part writes its
knowledge, co-partitioned with it, and returns one small row per knowledge piece, which
``summarise`` turns into the stage's summary. Both drivers give identical units.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tqdm import tqdm

from cluster.config import Config
from cluster.extract_parts import PartExtractor, TeacherFactory, default_factory
from cluster.layout import shapes_manifest, unfinished_parts
from cluster.storage import Storage

log = logging.getLogger(__name__)


def plan(storage: Storage, shapes_dir: str, knowledge_dir: str) -> tuple[list[str], int]:
    """(the unfinished shape parts, the table's shapes) from the manifests."""
    shapes = shapes_manifest(storage, shapes_dir)
    todo = unfinished_parts(shapes, storage.manifest(knowledge_dir))
    return todo, sum(int(s.get("shapes", 0)) for s in shapes.values())


def summarise(
    rows: list[dict[str, Any]], total: int, seconds: float, storage: Storage, knowledge_dir: str
) -> dict[str, Any]:
    """An extraction's summary (both drivers): {new, rejected, units, skipped, parts,
    shapes_per_s, table} from the rows of the knowledge pieces written."""
    storage.manifest(knowledge_dir)  # records the new pieces: the next planner reads one file
    new = sum(int(r["new"]) for r in rows)
    rejected = sum(int(r["rejected"]) for r in rows)
    skipped = max(0, total - new - rejected)  # done before (shapes of the table without a row of a part)
    return {
        "new": new,
        "rejected": rejected,
        "units": sum(int(r["units"]) for r in rows),
        "skipped": skipped,
        "parts": len(rows),
        "shapes_per_s": round((new + rejected) / seconds, 3) if seconds > 0 and new + rejected else 0.0,
        "table": storage.uri(knowledge_dir),
    }


def extract_local(
    cfg: Config,
    storage: Storage,
    shapes_dir: str,
    knowledge_dir: str,
    teacher_factory: TeacherFactory | None = None,
) -> dict[str, Any]:
    """Extraction in this process (one shape part in memory at a time).

    → {new, skipped, rejected, units, parts, shapes_per_s, table}: ``new`` shapes got
    knowledge, ``rejected`` went to rejects, ``skipped`` were done before, ``parts`` is
    the number of knowledge pieces written.
    """
    todo, total = plan(storage, shapes_dir, knowledge_dir)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if todo:
        teacher = (teacher_factory or default_factory)(cfg.teacher, cfg.seed)
        manifest = shapes_manifest(storage, shapes_dir)
        total = sum(int(manifest[p].get("shapes", 0)) for p in todo)
        with tqdm(total=total, desc="extract", unit="shape", disable=not cfg.progress) as bar:
            extract = PartExtractor(
                storage, cfg.run, shapes_dir, knowledge_dir, cfg.render, teacher, on_shape=lambda: bar.update(1)
            )
            for part in todo:
                rows += extract(part)
    summary = summarise(rows, total, time.perf_counter() - start, storage, knowledge_dir)
    log.info("extract (local): %s", summary)
    return summary
