"""Encoder pretraining on Ray Train: ``cluster.training.encoder``'s fit, DDP, fed by Ray Data.

The data is a Ray Data pipeline over the run's shape parts: a map task reads a part and
turns it into cloud rows (``cloud_rows``: points, normals, nothing else), and the stream
is split over the workers (``streaming_split(equal=True)``, Ray Train's default: every
worker takes the same number of clouds, so the same number of DDP steps an epoch). The
driver holds the part list only. Each worker runs ``cluster.training.encoder.run_fit`` on its
shard: it resumes from ``{run}/encoder/last.pt`` itself, so a worker group restarted by
``FailureConfig`` (``train.max_failures``) or a re-run of the job continues from the last
checkpoint; rank 0 writes checkpoints, curves and ``encoder.pt``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from cluster.config import Config, to_dict
from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from cluster.training.encoder import EncoderPlan, read_clouds

SHUFFLE_BUFFER = 256
"""Clouds a worker shuffles among (Ray Data's local shuffle buffer), beside the random
block order of every epoch."""


def cloud_rows(batch: dict[str, np.ndarray], config: dict[str, Any], shapes_dir: str) -> dict[str, Any]:
    """``map_batches`` function: one shape part in, its clouds out as rows."""
    from cluster.config import config_from_dict

    cfg = config_from_dict(config)
    storage = Storage.from_config(cfg.storage)
    (part,) = [str(p) for p in batch["part"]]
    c = cfg
    clouds = read_clouds(storage, shapes_dir, part, c.data.num_points, c.seed, c.student.use_normals)
    n = c.data.num_points
    out: dict[str, Any] = {"points": np.zeros((len(clouds), n * 3), np.float32)}
    for i, (points, _) in enumerate(clouds):
        out["points"][i] = points.reshape(-1)
    if c.student.use_normals:
        out["normals"] = np.stack([nr.reshape(-1) for _, nr in clouds]) if clouds else np.zeros((0, n * 3), np.float32)
    return out


def pretraining_dataset(cfg: Config, plan: EncoderPlan) -> Any:
    import ray.data

    items = [{"part": p} for p in plan.parts]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).randomize_block_order()
    # A part's read is a small fraction of a training step: no CPU asked (the workers hold
    # them), and the pool bounded so the first batch does not wait for every part.
    return ds.map_batches(
        cloud_rows,
        fn_kwargs={"config": to_dict(cfg), "shapes_dir": plan.shapes_dir},
        batch_size=1,
        batch_format="numpy",
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=cfg.cluster.train_workers + 1),
    )


def shard_clouds(shard: Any, batch_size: int, num_points: int, seed: int) -> Callable[[int], Iterator[Any]]:
    """A worker's batches of an epoch from its Ray Data shard."""
    import torch

    def batches(epoch: int) -> Iterator[Any]:
        for b in shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=SHUFFLE_BUFFER,
            local_shuffle_seed=seed + epoch,
        ):
            points = torch.from_numpy(np.ascontiguousarray(b["points"], np.float32)).reshape(-1, num_points, 3)
            normals = b.get("normals")
            if normals is not None:
                normals = torch.from_numpy(np.ascontiguousarray(normals, np.float32)).reshape(-1, num_points, 3)
            yield points, normals

    return batches


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: its share of the fit."""
    import ray.train
    import ray.train.torch
    import torch

    from cluster.config import config_from_dict
    from cluster.training.encoder import run_fit
    from cluster.training.train_ray import worker_mean
    from distill.training import Workers

    torch.set_num_threads(int(config["threads"]))
    cfg = config_from_dict(config["config"])
    storage = Storage.from_config(cfg.storage)
    plan = EncoderPlan.from_dict(config["plan"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    hook = config.get("fault_hook")

    def report(state: Any) -> None:
        ray.train.report({"epoch": state.epoch, "loss": state.history[-1]["loss"]})
        if hook is not None:
            hook(state.epoch, rank, world)

    shard = ray.train.get_dataset_shard("train")
    run_fit(
        cfg,
        storage,
        plan,
        ray.train.torch.get_device(),
        shard_clouds(shard, cfg.encoder.batch_size, cfg.data.num_points, cfg.train.data_order_seed(cfg.seed)),
        workers=Workers(rank, world, worker_mean(world)),
        wrap=ray.train.torch.prepare_model,
        report=report,
    )


def pretrain_on_ray(
    cfg: Config, storage: Storage, plan: EncoderPlan, fault_hook: Callable[[int, int, int], None] | None = None
) -> list[dict[str, float]]:
    """The fit on Ray Train (Ray must be connected) → its history (read from ``encoder.pt``).
    fault_hook: tests only, called on every worker after each epoch as (epoch, rank, world)."""
    from ray.train.torch import TorchTrainer

    from cluster.runtime.resources import train_scaling
    from cluster.training.checkpoints import load_torch
    from cluster.training.encoder import encoder_file
    from cluster.training.train_ray import run_config

    scaling = train_scaling(cfg)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "config": to_dict(cfg),
            "plan": plan.to_dict(),
            "threads": scaling.threads,
            "fault_hook": fault_hook,
        },
        scaling_config=scaling.scaling_config(),
        run_config=run_config(cfg, storage, f"{cfg.run}-encoder", RunPaths(cfg.run).encoder("ray_train")),
        datasets={"train": pretraining_dataset(cfg, plan)},
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"pretraining the encoder of {cfg.run} failed: {result.error}")
    return list(load_torch(storage, encoder_file(cfg.run))["history"])


__all__ = ["cloud_rows", "pretrain_on_ray", "pretraining_dataset"]
