"""The ingest stage: a data source → the Parquet shape table ``{run}/shapes/``.

Idempotent: shapes already in the table (or already rejected) are skipped without being
read; new shapes are written in parts of at most ``cluster.part_shapes`` shapes of one
category each (``cluster.layout``), so an interrupted run loses at most one part's work
and a student reads only its categories' parts. The table's manifest is refreshed at the
end. A file that cannot be read goes to ``{run}/rejects/`` with its
reason and the run goes on.
"""

from __future__ import annotations

import logging
from typing import Any

from tqdm import tqdm

import generation  # noqa: F401 - registers the data.source=procedural reader with distill.readers
from cluster.config import Config
from cluster.layout import part_name, shape_summary, shapes_manifest
from cluster.rejects import read_rejects, write_rejects
from cluster.storage import Storage
from distill.config import DataConfig
from distill.readers import iter_items
from distill.records import Shape, shapes_to_table
from distill.superpoints import attach_superpoints

log = logging.getLogger(__name__)


def shapes_dir(run: str) -> str:
    return f"{run}/shapes"


def ingest(
    cfg: Config,
    storage: Storage,
    data: DataConfig | None = None,
    table_dir: str | None = None,
    chunk: int | None = None,
) -> dict[str, Any]:
    """Ingest ``data`` (default ``cfg.data``) into ``table_dir`` (default ``{run}/shapes``)."""
    data = data or cfg.data
    table_dir = table_dir or shapes_dir(cfg.run)
    chunk = chunk or cfg.cluster.part_shapes
    done = storage.done_ids(table_dir)
    counts = {"new": 0, "skipped": 0, "rejected": 0}
    # One buffer a category (a mixture interleaves its sources' categories); rejects ride
    # with the next part written, so their ids are recorded as done with it.
    buffers: dict[str, list[Shape]] = {}
    rejects: list[tuple[str, str]] = []
    reject_ids: list[str] = []

    def flush(category: str | None) -> None:
        shapes = buffers.pop(category, []) if category is not None else []
        if not shapes and not reject_ids:
            return
        # Rejects first: a crash between the two writes re-reads the bad file next time
        # (and re-rejects it) rather than losing its reason.
        write_rejects(storage, cfg.run, "ingest", rejects)
        ids = [s.shape_id for s in shapes] + reject_ids
        attach_superpoints(shapes)
        storage.write_part(
            table_dir, shapes_to_table(shapes), done_ids=ids, name=part_name(ids), summary=shape_summary(shapes)
        )
        rejects.clear()
        reject_ids.clear()

    items = iter_items(data, cfg.seed)
    for item in tqdm(items, desc=f"ingest {data.source}", unit="shape", disable=not cfg.progress):
        if item.shape_id in done:
            counts["skipped"] += 1
            continue
        done.add(item.shape_id)
        try:
            shape = item.load()
        except Exception as e:  # noqa: BLE001 - any failure of one file rejects that file only
            rejects.append((item.path or item.shape_id, f"{type(e).__name__}: {e}"))
            reject_ids.append(item.shape_id)
            counts["rejected"] += 1
            if len(reject_ids) >= chunk:
                flush(None)
            continue
        buffers.setdefault(shape.category, []).append(shape)
        counts["new"] += 1
        if len(buffers[shape.category]) >= chunk:
            flush(shape.category)
        elif sum(len(b) for b in buffers.values()) >= 4 * chunk:  # many categories at once: bound memory
            flush(max(buffers, key=lambda c: len(buffers[c])))
    for category in sorted(buffers):
        flush(category)
    flush(None)

    per_category: dict[str, int] = {}
    for part in shapes_manifest(storage, table_dir).values():
        for c, n in part.get("categories", {}).items():
            per_category[c] = per_category.get(c, 0) + int(n)
    categories = sorted(per_category)
    summary = {
        "shapes": sum(per_category.values()),
        **counts,
        "rejects_total": len(read_rejects(storage, cfg.run, "ingest")),
        "categories": categories,
        "table": storage.uri(table_dir),
    }
    log.info("ingest: %s", summary)
    return summary
