"""The training stage on Ray Train: the same per-student body as ``cluster.train``, DDP.

Per student, ``TorchTrainer`` fits alternate with backward distillation's re-scoring
passes: a fit runs ``cluster.train_workers`` workers (gloo on CPU, nccl on GPU via
``prepare_model``), each reading the shape and knowledge tables through Ray Data (not
split: ``distill.training.epoch_batches`` shards the epoch by rank), epoch losses averaged
with an all-reduce, checkpoints written by rank 0 to the run's storage
(``{run}/checkpoints/{student}/last.pt``) and metrics reported to Ray Train every epoch.
When re-scoring is due the fit stops with ``last.pt`` awaiting it; ``cluster.rescore_ray``
re-scores every unit on a Ray Data actor pool, writes ``knowledge/round_{k}/`` and puts
the scores into ``last.pt``; the next fit resumes from there. A worker that dies makes Ray
Train restart the group (``FailureConfig``), and the restarted workers resume from
``last.pt``; so does a re-run of the job with the same run name, at whichever step.

Fault injection for tests: with ``PARTDISTILL_FAULT_EPOCH=k`` and
``PARTDISTILL_FAULT_MARKER=<file>``, worker rank 1 (or 0 when alone) exits hard after
epoch k, once (the marker file records that it did).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cluster.checkpoints import checkpoint_dir
from cluster.storage import Storage
from distill.config import Config, to_dict

log = logging.getLogger(__name__)


def _maybe_fault(epoch: int, rank: int, world_size: int) -> None:
    target = os.environ.get("PARTDISTILL_FAULT_EPOCH")
    marker = os.environ.get("PARTDISTILL_FAULT_MARKER")
    if not target or not marker or epoch != int(target) or rank != min(1, world_size - 1):
        return
    if os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(f"worker {rank} killed after epoch {epoch}\n")
    os._exit(1)


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from cluster.train import StudentJob, train_student
    from distill.config import config_from_dict
    from distill.records import row_to_shape, rows_to_units
    from distill.training import LabelSpace

    torch.set_num_threads(int(config["threads"]))
    cfg = config_from_dict(config["config"])
    storage = Storage.from_config(cfg.storage)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    space = LabelSpace.from_dict(config["space"])
    shapes = [row_to_shape(r) for r in ray.train.get_dataset_shard("shapes").iter_rows()]
    shapes = [s for s in shapes if s.category in space.categories]
    units = rows_to_units(ray.train.get_dataset_shard("units").iter_rows())
    job = StudentJob(config["student"], space, sorted(shapes, key=lambda s: s.shape_id), units)

    def reduce_mean(x: float) -> float:
        if world == 1 or not dist.is_initialized():
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item() / world)

    def report(state: Any, ckpt_rel: str | None) -> None:
        last = state.history[-1]
        ray.train.report({"epoch": state.epoch, "loss": last["loss"], "round": state.round})
        _maybe_fault(state.epoch, rank, world)

    info = train_student(
        cfg,
        storage,
        job,
        ray.train.torch.get_device(),
        rank=rank,
        world_size=world,
        wrap=ray.train.torch.prepare_model,
        reduce_mean=reduce_mean,
        report=report,
        rescore_externally=True,
    )
    if rank == 0:
        storage.write_json(f"{checkpoint_dir(cfg.run, job.name)}/train_info.json", info)


def _datasets(storage: Storage, shapes_dir: str, units_dir: str) -> dict[str, Any]:
    import ray.data

    from distill.records import SHAPE_SCHEMA, UNIT_SCHEMA

    # Read on the driver and handed to Ray Data as in-memory blocks: no read tasks, so
    # nothing waits for CPUs that the training workers hold on a small cluster.
    return {
        "shapes": ray.data.from_arrow(storage.read_table(shapes_dir, schema=SHAPE_SCHEMA)),
        "units": ray.data.from_arrow(storage.read_table(units_dir, schema=UNIT_SCHEMA)),
    }


def _pending_round(storage: Storage, ckpt: str) -> int | None:
    """The round a student's ``last.pt`` waits to have re-scored, or None."""
    from cluster.checkpoints import load_torch

    if not storage.exists(ckpt, "last.pt"):
        return None
    state = load_torch(storage, f"{ckpt}/last.pt")
    return int(state["round"]) + 1 if state.get("pending_rescore") else None


def train_on_ray(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> dict[str, Any]:
    """Train every unfinished student of the run with Ray Train (Ray must be connected).

    Per student, fits alternate with backward distillation's re-scoring passes: a fit
    trains until the re-scoring is due (or to the end); ``cluster.rescore_ray`` re-scores
    on a Ray Data actor pool, writes ``knowledge/round_{k}/`` and resumes ``last.pt``; the
    next fit continues from there. A re-run picks up wherever this stopped.
    """
    from cluster.rescore_ray import rescore_on_ray
    from cluster.train import knowledge_dir, load_training_data

    if cfg.train.bd_rounds and cfg.train.rescore != "agreement":
        # The re-scoring pass (cluster.rescore_ray) runs the paper's rule only so far.
        raise NotImplementedError(
            f"train.rescore={cfg.train.rescore} runs in the local loop only (cluster.backend=local); "
            "the Ray re-scoring pass implements train.rescore=agreement"
        )
    jobs = load_training_data(cfg, storage, shapes_dir, units_dir)
    students, skipped = [], []
    for job in jobs:
        ckpt = checkpoint_dir(cfg.run, job.name)
        if storage.exists(ckpt, "final.pt"):
            skipped.append(job.name)
            continue
        rounds, fit_seconds = [], 0.0
        for _ in range(cfg.train.bd_rounds + 1):
            pending = _pending_round(storage, ckpt)
            if pending is not None:
                out = knowledge_dir(cfg.run, pending)
                rounds.append(
                    rescore_on_ray(cfg, storage, job.name, job.space, shapes_dir, units_dir, f"{ckpt}/last.pt", out)
                )
            info = _fit(cfg, storage, job, shapes_dir, units_dir)
            fit_seconds += float(info.get("seconds", 0.0))
            if not info.get("pending_rescore"):
                break
        else:  # more re-scorings were asked for than train.bd_rounds allows: a bug
            raise RuntimeError(f"student {job.name}: still waiting for a re-scoring after {cfg.train.bd_rounds} rounds")
        # seconds: the training loops of all fits (each fit's start-up and the passes apart)
        students.append({**info, "seconds": round(fit_seconds, 1), "rescoring": rounds})
    return {
        "students": students,
        "skipped": skipped,
        "workers": cfg.cluster.train_workers,
        "backend": "ray",
    }


def _fit(cfg: Config, storage: Storage, job: Any, shapes_dir: str, units_dir: str) -> dict[str, Any]:
    """One Ray Train fit of a student, to its end or to its next re-scoring."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from cluster.runtime import train_scaling

    scaling = train_scaling(cfg)
    cpus = max(1, int(scaling.resources_per_worker.get("CPU", 1)))
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": to_dict(cfg), "student": job.name, "space": job.space.to_dict(), "threads": cpus},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=scaling.resources_per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=f"{cfg.run}-{job.name}",
            storage_path=storage.path(cfg.run, "ray_train"),
            storage_filesystem=storage.pyarrow_filesystem(),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
        ),
        datasets=_datasets(storage, shapes_dir, units_dir),
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training student {job.name} failed: {result.error}")
    return storage.read_json(f"{checkpoint_dir(cfg.run, job.name)}/train_info.json")
