"""The ingest stage: a data source → the Parquet shape table ``{run}/shapes/``.

Idempotent: shapes already in the table (or already rejected) are skipped without being
read. The driver lists the source (``distill.readers``: names, categories and paths, no
file opened) and groups the new items into batches of at most ``cluster.part_shapes``
shapes of one category each (``ingest_batches``: one buffer a category, at most
``4 × part_shapes`` items held), handed out a window at a time. Workers
(``ingest_batch``, CPU tasks on Ray or calls in this process, ``cluster.passes.runner``) read
the batch's files and write it as one part (``cluster.store.layout``), so an interrupted run
loses at most the batches in flight and a student reads only its categories' parts. A
file that cannot be read goes to ``{run}/rejects/`` with its reason, written before the
part that records it as done, and the run goes on. The table's manifest is refreshed at
the end.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

import generation  # noqa: F401 - registers the data.source=procedural reader with distill.readers
from cluster.config import Config
from cluster.passes.runner import Pass, Step, run_pass
from cluster.runtime.resources import Pool
from cluster.store.layout import part_name, shape_summary, shapes_manifest
from cluster.store.paths import RunPaths
from cluster.store.rejects import read_rejects, write_rejects
from cluster.store.storage import Storage
from distill.config import DataConfig
from distill.readers import SourceItem, iter_items
from distill.records import Shape, shapes_to_table
from distill.superpoints import attach_superpoints

log = logging.getLogger(__name__)

RESULT_SCHEMA = pa.schema([("part", pa.string()), ("new", pa.int64()), ("rejected", pa.int64())])
"""What an ingest worker hands the driver: one row per part written."""
WINDOW_BATCHES = 64
"""Batches handed to Ray at a time: the driver holds at most this many (pickled items)."""


def shapes_dir(run: str) -> str:
    return RunPaths(run).shapes


def ingest_batches(items: Iterator[SourceItem], chunk: int) -> Iterator[dict[str, Any]]:
    """The new ``items`` as batches of one category (≤ ``chunk`` items) → rows
    ``{"category", "items"}`` (the pickled ``SourceItem``s). A mixture interleaves its
    sources' categories: one buffer a category, and the largest is handed out when they
    hold ``4 × chunk`` items in all."""
    buffers: dict[str, list[SourceItem]] = {}

    def batch(category: str) -> dict[str, Any]:
        return {"category": category, "items": pickle.dumps(buffers.pop(category))}

    for item in items:
        buffers.setdefault(item.category, []).append(item)
        if len(buffers[item.category]) >= chunk:
            yield batch(item.category)
        elif sum(len(b) for b in buffers.values()) >= 4 * chunk:  # many categories at once: bound memory
            yield batch(max(buffers, key=lambda c: len(buffers[c])))
    for category in sorted(buffers):
        yield batch(category)


def ingest_batch(batch: dict[str, np.ndarray], storage: Storage, run: str, table_dir: str) -> pa.Table:
    """The pass's step: each batch's files read and written as one part (its rejects
    first: a crash between the two writes re-reads the bad file next time rather than
    losing its reason) → ``RESULT_SCHEMA`` rows."""
    rows = []
    for blob in batch["items"]:
        shapes: list[Shape] = []
        rejects: list[tuple[str, str]] = []
        ids = []
        for item in pickle.loads(blob):
            ids.append(item.shape_id)
            try:
                shapes.append(item.load())
            except Exception as e:  # noqa: BLE001 - any failure of one file rejects that file only
                rejects.append((item.path or item.shape_id, f"{type(e).__name__}: {e}"))
        write_rejects(storage, run, "ingest", rejects)
        attach_superpoints(shapes)
        name = part_name(ids)
        storage.write_part(table_dir, shapes_to_table(shapes), done_ids=ids, name=name, summary=shape_summary(shapes))
        rows.append({"part": name, "new": len(shapes), "rejected": len(rejects)})
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


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
    done = storage.done_ids(table_dir)
    skipped = 0

    def new() -> Iterator[SourceItem]:
        nonlocal skipped
        for item in iter_items(data, cfg.seed):
            if item.shape_id in done:
                skipped += 1
            else:
                yield item

    kwargs = {"storage": storage, "run": cfg.run, "table_dir": table_dir}
    step = Step(ingest_batch, kwargs, Pool(tasks=True))
    p = Pass(f"ingest {data.source}", (step,), unit="batch", window=WINDOW_BATCHES)
    rows = run_pass(cfg, p, ingest_batches(new(), chunk or cfg.cluster.part_shapes)).rows
    per_category: dict[str, int] = {}
    for part in shapes_manifest(storage, table_dir).values():
        for c, n in part.get("categories", {}).items():
            per_category[c] = per_category.get(c, 0) + int(n)
    fresh = sum(int(r["new"]) for r in rows)
    rejected = sum(int(r["rejected"]) for r in rows)
    summary = {
        "shapes": sum(per_category.values()),
        "new": fresh,
        "skipped": skipped,
        "rejected": rejected,
        "rejects_total": len(read_rejects(storage, cfg.run, "ingest")),
        "categories": sorted(per_category),
        "table": storage.uri(table_dir),
    }
    log.info("ingest: %s", summary)
    return summary
