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

from cluster.layout import shape_summary, shapes_manifest
from cluster.rejects import read_rejects, write_rejects
from cluster.storage import Storage
from distill.config import Config, DataConfig
from distill.readers import iter_items
from distill.records import Shape, shapes_to_table

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
    shapes: list[Shape] = []
    rejects: list[tuple[str, str]] = []
    finished: list[str] = []

    def flush() -> None:
        # Rejects first: a crash between the two writes re-reads the bad file next time
        # (and re-rejects it) rather than losing its reason.
        write_rejects(storage, cfg.run, "ingest", rejects)
        if finished:
            storage.write_part(table_dir, shapes_to_table(shapes), done_ids=finished, summary=shape_summary(shapes))
        shapes.clear()
        rejects.clear()
        finished.clear()

    items = iter_items(data, cfg.seed)
    for item in tqdm(items, desc=f"ingest {data.source}", unit="shape", disable=not cfg.progress):
        if item.shape_id in done:
            counts["skipped"] += 1
            continue
        try:
            shape = item.load()
        except Exception as e:  # noqa: BLE001 - any failure of one file rejects that file only
            rejects.append((item.path or item.shape_id, f"{type(e).__name__}: {e}"))
            counts["rejected"] += 1
        else:
            if shapes and shape.category != shapes[-1].category:
                flush()  # one category a part (readers list a category's items together)
            shapes.append(shape)
            counts["new"] += 1
        finished.append(item.shape_id)
        done.add(item.shape_id)
        if len(finished) >= chunk:
            flush()
    flush()

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
