"""The runner's contract (``cluster.passes.runner``), for every pass over shape parts: on the same
inputs, the Ray Data pool writes the same tables as this process (byte for byte where the
work is deterministic), resumes after a killed actor or task, and skips finished items on
a re-run.

One small run (smoke, 3 categories, 2-shape parts) is made once a module, in this
process; each pass then runs on copies of it, once here and once on a real local Ray
whose first worker to take a batch is killed (``runner.FAULT_HOOK``). The fast lane keeps
each pass's own Ray tests (``test_extract_ray``, ``test_rescore_ray``, ``test_generate_ray``)
and the runner's pure pieces (``test_runner``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cluster.config import Config, load_config
from cluster.job import run_job
from cluster.passes import runner
from cluster.passes.evaluate import evaluate_parts, plan_items
from cluster.passes.extract import extract
from cluster.passes.generate import generate
from cluster.passes.ingest import ingest
from cluster.passes.relabel import relabel
from cluster.passes.rescore import rescore_pass
from cluster.passes.segment import segment
from cluster.pipeline import pretrain
from cluster.store.storage import Storage
from distill.records import UNIT_SCHEMA, table_to_units
from tests.backends import here, on_ray
from tests.cluster.bd_run import CKPT, pending_run

# About 2 minutes (a Ray run of every pass, a killed worker each): the slow lane.
pytestmark = pytest.mark.slow

RUN = "c"
ARGS = ["--config", "smoke", f"run={RUN}", "cluster.backend=local", "cluster.part_shapes=2", "progress=false"]
ARGS += ["data.per_category=2", "data.num_points=256", "render.image_size=64", "train.epochs=2"]
SELF_TRAINED = ["train.relabel_rounds=1", "train.bd_rounds=0", "eval.enabled=false"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """The run every pass starts from: shapes, round-0 knowledge, a self-training round's
    students (so relabelling has students to relabel with) and the run's students."""
    root = tmp_path_factory.mktemp("made")
    run_job("pretrain", pretrain, [*ARGS, *SELF_TRAINED, f"storage.root={root}"])
    return root


@dataclass(frozen=True)
class Case:
    """One pass: ``run(cfg, storage)`` on a copy of the made run → the summary; ``outputs``:
    the folders it writes; ``fresh``: folders deleted before it runs (its own output)."""

    run: Callable[[Config, Storage], dict]
    outputs: tuple[str, ...]
    fresh: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    exact: bool = True
    """Byte-equal tables; else equal units per shape (pieces may be cut differently)."""
    reruns: bool = False
    """A re-run recomputes everything (evaluation: its sums depend on ``eval.*``)."""


SHAPES, KNOWLEDGE = f"{RUN}/shapes", f"{RUN}/knowledge/round_0"


def _evaluate(cfg: Config, storage: Storage) -> dict:
    sums, categories, untrained = evaluate_parts(cfg, storage, SHAPES, KNOWLEDGE, True, f"{RUN}/predictions")
    return {m: t.sums for m, t in sums.items()} | {"categories": sorted(categories), "untrained": sorted(untrained)}


CASES = {
    "ingest": Case(lambda c, s: ingest(c, s), (SHAPES,), fresh=(RUN,)),
    "generate": Case(
        lambda c, s: generate(c, s),
        (SHAPES,),
        fresh=(RUN,),
        args=("generation.count=3", "generation.categories=[chair,lamp]"),
    ),
    "extract_fused": Case(lambda c, s: extract(c, s, SHAPES, KNOWLEDGE), (KNOWLEDGE,), fresh=(KNOWLEDGE,)),
    "extract_split": Case(
        lambda c, s: extract(c, s, SHAPES, KNOWLEDGE),
        (KNOWLEDGE,),
        fresh=(KNOWLEDGE,),
        args=("cluster.extract_layout=split",),
        exact=False,
    ),
    "evaluate": Case(_evaluate, (f"{RUN}/predictions",), fresh=(f"{RUN}/predictions",), reruns=True),
    "relabel": Case(
        lambda c, s: relabel(c, s, plan_items(s, SHAPES, KNOWLEDGE), SHAPES, KNOWLEDGE, 1),
        (f"{RUN}/knowledge/relabel_1",),
        fresh=(f"{RUN}/knowledge/relabel_1",),
        args=tuple(SELF_TRAINED),
    ),
    "segment": Case(lambda c, s: segment(c, s), (f"{RUN}/segment",), fresh=(f"{RUN}/segment",)),
}


def _copy(made: Path, root: Path, case: Case) -> tuple[Config, Storage]:
    shutil.copytree(made, root)
    for folder in case.fresh:
        shutil.rmtree(root / folder, ignore_errors=True)
    cfg = load_config([*ARGS, *case.args, f"storage.root={root}"])
    return cfg, Storage.from_config(cfg.storage)


def _files(root: Path, folders: tuple[str, ...]) -> dict[str, bytes]:
    """Every file the pass wrote (its manifests, a cache of the footers, aside)."""
    out = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and not path.name.startswith("_manifest"):
                out[str(path.relative_to(root))] = path.read_bytes()
    return out


def _units(storage: Storage) -> dict:
    return table_to_units(storage.read_table(KNOWLEDGE, schema=UNIT_SCHEMA))


def _assert_same(case: Case, local: Path, ray: Path, local_out: dict, ray_out: dict) -> None:
    if not case.exact:
        a, b = _units(Storage(str(local))), _units(Storage(str(ray)))
        assert a.keys() == b.keys() and a
        for sid in a:
            for field in ("view", "label", "score", "point_idx", "offsets"):
                np.testing.assert_array_equal(getattr(a[sid], field), getattr(b[sid], field), err_msg=sid)
        return
    files = _files(local, case.outputs)
    assert files and files.keys() == _files(ray, case.outputs).keys()
    for name, data in files.items():
        assert (ray / name).read_bytes() == data, name
    if case.run is _evaluate:
        assert local_out == ray_out


class KillOnce:
    """``runner.FAULT_HOOK`` that kills the first worker process to call it (a marker file
    says it happened), as an OOM kill or a lost node would."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self) -> None:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os._exit(1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_ray_writes_what_this_process_writes_despite_a_kill_and_a_rerun_skips(
    name, made, tmp_path, ray_local, monkeypatch
):
    case = CASES[name]
    cfg, storage = _copy(made, tmp_path / "local", case)
    local_out = case.run(here(cfg), storage)

    # On Ray, the first worker to take a batch is killed: Ray replaces it and retries.
    rcfg, rstorage = _copy(made, tmp_path / "ray", case)
    marker = tmp_path / "killed"
    monkeypatch.setattr(runner, "FAULT_HOOK", KillOnce(str(marker)))
    rstorage.reads.reset()
    ray_out = case.run(on_ray(rcfg), rstorage)
    monkeypatch.setattr(runner, "FAULT_HOOK", None)
    assert marker.exists()
    assert rstorage.reads.rows == {}  # the workers read the parts; the driver none
    _assert_same(case, tmp_path / "local", tmp_path / "ray", local_out, ray_out)

    # A re-run on Ray: nothing left to do, nothing rewritten (evaluation recomputes, equal).
    before = _files(tmp_path / "ray", case.outputs)
    again = case.run(on_ray(rcfg), rstorage)
    assert _files(tmp_path / "ray", case.outputs) == before
    if case.reruns:
        assert again == ray_out
    else:
        assert _skipped_all(name, again), again


def _skipped_all(name: str, summary: dict) -> bool:
    """The pass's summary says it found everything done."""
    if name in ("ingest", "generate"):
        return summary["new"] == 0 and summary["skipped"] > 0
    if name.startswith("extract"):
        return summary["new"] == 0 and summary["parts"] == 0 and summary["skipped"] > 0
    if name == "relabel":
        return summary["parts"] == 0 and summary["skipped_parts"] > 0
    if name == "segment":
        return summary["segmented"] == 0 and summary["skipped"] > 0
    raise AssertionError(name)


def test_rescoring_on_ray_writes_what_this_process_writes_despite_a_kill_and_a_rerun_skips(
    tmp_path, bd_extracted, ray_local, monkeypatch
):
    """The re-scoring pass (its own small run: a student awaiting a re-scoring)."""
    written = {}
    for where in ("local", "ray"):
        (tmp_path / where).mkdir()
        cfg, storage, plan = pending_run(tmp_path / where, bd_extracted)
        if where == "ray":
            monkeypatch.setattr(runner, "FAULT_HOOK", KillOnce(str(tmp_path / "killed")))
        summary = rescore_pass(on_ray(cfg) if where == "ray" else here(cfg), storage, plan, CKPT)
        monkeypatch.setattr(runner, "FAULT_HOOK", None)
        assert summary["parts"] == len(plan.items) and summary["skipped_parts"] == 0
        written[where] = _files(tmp_path / where, (plan.tables(1).scores_dir,))
        again = rescore_pass(on_ray(cfg), storage, plan, CKPT)
        assert again["parts"] == 0 and again["skipped_parts"] == len(plan.items)
    assert written["local"] and written["local"] == written["ray"]
    assert (tmp_path / "killed").exists()
