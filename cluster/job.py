"""The frame every job runs in: config → storage → stage → one-line JSON summary.

``python jobs/X.py [--config FILE] [key=value ...]`` calls ``run_job``: the stage's summary
is printed as the *last line* of standard output and merged into
``{root}/{run}/metrics.json`` under the job's name. A user error (``distill.errors.UserError``:
a bad config key, a missing data path, a run with no trained student, an unknown category,
unreachable storage) ends the job with one line on standard error,
``error: <what> — <what to do>``, and exit status 2; any other error keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from cluster.config import Config, load_config, to_dict
from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from distill.errors import UserError

log = logging.getLogger("partdistill")

StageFn = Callable[[Config, Storage], dict[str, Any]]


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def record_metrics(storage: Storage, run: str, job: str, summary: dict[str, Any]) -> None:
    """Merge ``summary`` into ``{run}/metrics.json`` under ``job`` (read-modify-write)."""
    rel = RunPaths(run).metrics
    metrics: dict[str, Any] = {}
    if storage.exists(rel):
        try:
            metrics = storage.read_json(rel)
        except (ValueError, OSError):
            log.warning("%s was unreadable; starting it afresh", storage.uri(rel))
    metrics[job] = summary
    metrics["last_job"] = job
    storage.write_json(rel, metrics)


def run_job(job: str, stage: StageFn, argv: list[str] | None = None) -> dict[str, Any]:
    """Run one job from the command line; returns its summary (tests call this directly).

    A ``UserError`` from the config, the storage or the stage exits with status 2 after
    printing its one line (``UserError.line``): the user fixes an argument, not the code.
    """
    setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _run(job, stage, argv)
    except UserError as e:
        print(e.line(), file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _run(job: str, stage: StageFn, argv: list[str]) -> dict[str, Any]:
    cfg = load_config(argv)
    storage = Storage.from_config(cfg.storage)
    log.info("%s: run=%s storage=%s", job, cfg.run, storage.uri(cfg.run))
    storage.write_json(RunPaths(cfg.run).job_config(job), to_dict(cfg))
    start = time.perf_counter()
    summary = stage(cfg, storage)
    summary = {"job": job, "run": cfg.run, **summary, "seconds": round(time.perf_counter() - start, 2)}
    record_metrics(storage, cfg.run, job, summary)
    print(json.dumps(summary, sort_keys=False, default=str), flush=True)
    return summary
