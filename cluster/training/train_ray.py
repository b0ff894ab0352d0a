"""The training stage on Ray Train: the same fits as ``cluster.training.train``, DDP, fed by Ray Data.

Per student, ``TorchTrainer`` fits alternate with backward distillation's re-scoring
passes (``cluster.passes.rescore``, on Ray Data). A fit's data is a Ray Data pipeline over the student's
shape parts (``cluster.store.layout.plan_parts``: only its categories' parts): each item — a
shape part with its co-partitioned knowledge and, past round 0, the round's scores — is
read from storage and turned into prepared samples (``cluster.training.samples.load_item``) by a
map task, and the stream is split over the workers with Ray Train's default
``DataConfig`` (``streaming_split(equal=True)``: every worker takes the same number of
samples, so the same number of DDP steps an epoch). Each worker consumes its shard with
``iter_batches`` and a collate; nothing of the tables passes through the driver, and a
fit's start-up does not grow with the corpus.

Epoch losses are averaged with an all-reduce, checkpoints written by rank 0
(``{run}/checkpoints/{student}/last.pt``), metrics reported every epoch. A worker that
dies makes Ray Train restart the group (``FailureConfig``), resuming from ``last.pt``; so
does a re-run of the job, at whichever step. With ``train.per_category`` the students'
loops run concurrently, as many as the cluster holds worker groups for
(``cluster.concurrent_students``).

Fault injection for tests: ``train_on_ray(..., fault_hook=hook)`` ships ``hook`` to the
workers with the loop's config; each calls it after every epoch with (epoch, rank, world).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cluster.config import Config, to_dict
from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from cluster.training.checkpoints import checkpoint_dir
from cluster.training.students import StudentPlan, plan_students
from cluster.training.train import FitOutcome, fit_student, is_finished, last_state, train_student

log = logging.getLogger(__name__)

FaultHook = Callable[[int, int, int], None]
"""Tests only: called on every worker after each epoch as ``hook(epoch, rank, world)``."""

SHUFFLE_BUFFER = 256
"""Samples a worker shuffles among (Ray Data's local shuffle buffer), beside the random
block order of every epoch."""


def sample_rows(batch: dict[str, np.ndarray], config: dict[str, Any], plan: dict[str, Any], round: int) -> Any:
    """``map_batches`` function of the training ingest: one item in, its training samples
    out as ``SAMPLE_SCHEMA`` rows (shapes with units; validation shapes and a cross-fitted
    student's fold held out)."""
    from cluster.config import config_from_dict
    from cluster.store.layout import PartItem
    from cluster.training.samples import load_item, samples_to_table
    from distill.sources import trains_on

    cfg = config_from_dict(config)
    student = StudentPlan.from_dict(plan)
    storage = Storage.from_config(cfg.storage)
    val = cfg.train.val_fraction if cfg.train.select == "val" else 0.0
    (item,) = [PartItem.from_row({k: batch[k][i] for k in batch}) for i in range(len(batch["shape_part"]))]
    samples = load_item(storage, student.tables(round), item, student.space, cfg.data.num_points, cfg.seed)
    fold = (cfg.train.fold, cfg.train.relabel_folds)
    return samples_to_table([s for s in samples if s.num_units and trains_on(s.shape_id, cfg.seed, val, *fold)])


def training_dataset(cfg: Config, plan: StudentPlan, round: int) -> Any:
    """The lazy Ray Dataset of a fit: the student's items → sample rows."""
    import ray.data

    items = [i.to_row() for i in plan.items]
    # The parts' order is shuffled on the (tiny) item list, before the map: shuffling the
    # map's output blocks would be a barrier that materialises the whole corpus.
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).randomize_block_order()
    # num_cpus=0: the map reads a part and prepares its samples, a small fraction of a
    # training step's work; asking for a CPU would wait on the ones the workers hold.
    # With no CPU to bound it, the pool is capped explicitly: one part in flight per
    # worker (plus one), or every part would start at once and the first batch would wait
    # for all of them — a start-up that grows with the corpus.
    return ds.map_batches(
        sample_rows,
        fn_kwargs={"config": to_dict(cfg), "plan": plan.to_dict(), "round": round},
        batch_size=1,
        batch_format="numpy",
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=cfg.cluster.train_workers + 1),
    )


def shard_batches(shard: Any, batch_size: int, seed: int) -> Callable[[int], Iterator[Any]]:
    """A worker's training batches of an epoch, from its Ray Data shard."""
    from cluster.training.samples import table_to_batch

    def batches(epoch: int) -> Iterator[Any]:
        for table in shard.iter_batches(
            batch_size=batch_size,
            batch_format="pyarrow",
            local_shuffle_buffer_size=SHUFFLE_BUFFER,
            local_shuffle_seed=seed + epoch,
        ):
            yield table_to_batch(table)

    return batches


def worker_mean(world: int) -> Callable[[float], float]:
    """A float averaged over a Ray Train worker group (an all-reduce; itself alone)."""
    import torch
    import torch.distributed as dist

    def reduce_mean(x: float) -> float:
        if world == 1 or not dist.is_initialized():
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item() / world)

    return reduce_mean


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: one fit of one student."""
    import ray.train
    import ray.train.torch
    import torch

    from cluster.config import config_from_dict
    from distill.training import Workers

    torch.set_num_threads(int(config["threads"]))
    cfg = config_from_dict(config["config"])
    storage = Storage.from_config(cfg.storage)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.get("global_batch"):  # elastic: the planned global batch on however many workers run
        from cluster.runtime.resources import per_worker_batch

        cfg.train.batch_size = per_worker_batch(int(config["global_batch"]), world)
    plan = StudentPlan.from_dict(config["plan"])
    shard = ray.train.get_dataset_shard("train")
    hook = config.get("fault_hook")

    def report(state: Any, ckpt_rel: str | None) -> None:
        ray.train.report({"epoch": state.epoch, "loss": state.history[-1]["loss"], "round": state.round})
        if hook is not None:
            hook(state.epoch, rank, world)

    ckpt = checkpoint_dir(cfg.run, plan.name)
    outcome = fit_student(
        cfg,
        storage,
        plan,
        ray.train.torch.get_device(),
        last_state(storage, ckpt),  # each worker's own read: a restarted group resumes from it too
        workers=Workers(rank, world, worker_mean(world)),
        wrap=ray.train.torch.prepare_model,
        report=report,
        # training batches from the shard; the small bounded reads (BatchNorm
        # re-calibration, pose references, validation) straight from storage
        stream=shard_batches(shard, cfg.train.batch_size, cfg.train.data_order_seed(cfg.seed)),
    )
    if rank == 0:
        storage.write_json(f"{ckpt}/train_info.json", outcome.to_dict())


def run_config(cfg: Config, storage: Storage, name: str, state_dir: str) -> Any:
    """A Ray Train ``RunConfig``: its state in ``state_dir`` on the run's storage, and
    ``train.max_failures`` worker-group restarts."""
    import ray.train

    return ray.train.RunConfig(
        name=name,
        storage_path=storage.path(state_dir),
        storage_filesystem=storage.pyarrow_filesystem(),
        failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
    )


def fit_on_ray(
    cfg: Config, storage: Storage, plan: StudentPlan, state: dict[str, Any] | None, fault_hook: FaultHook | None = None
) -> FitOutcome:
    """One Ray Train fit of a student from ``state`` (its ``last.pt``, read by the driver
    for the round its data pipeline reads; the workers load the weights themselves), to
    its end or to its next re-scoring."""
    from ray.train.torch import TorchTrainer

    from cluster.runtime.resources import train_scaling

    ckpt = checkpoint_dir(cfg.run, plan.name)
    at_round = int(state["round"]) if state else 0
    scaling = train_scaling(cfg)
    loop_config = {
        "config": to_dict(cfg),
        "plan": plan.to_dict(),
        "threads": scaling.threads,
        "fault_hook": fault_hook,
        "global_batch": scaling.global_batch(cfg.train.batch_size),
    }
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=loop_config,
        scaling_config=scaling.scaling_config(),
        run_config=run_config(cfg, storage, f"{cfg.run}-{plan.name}", RunPaths(cfg.run).ray_train),
        datasets={"train": training_dataset(cfg, plan, at_round)},
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training student {plan.name} failed: {result.error}")
    return FitOutcome.from_dict(storage.read_json(f"{ckpt}/train_info.json"))


def train_student_on_ray(
    cfg: Config, storage: Storage, plan: StudentPlan, fault_hook: FaultHook | None = None
) -> dict[str, Any]:
    """A student's fits (Ray Train) and re-scoring passes (Ray Data), to ``final.pt``."""
    from cluster.passes.rescore import rescore_pass
    from cluster.runtime.autoscaling import held_bundles, hold_capacity

    def rescore(snapshot: str) -> dict[str, Any]:
        # Ray Train asks the autoscaler for the training nodes only while a fit runs:
        # hold them through the pass, so the next fit finds them (cluster.runtime.autoscaling).
        with hold_capacity(held_bundles(cfg), name=f"train-{plan.name}"):
            return rescore_pass(cfg, storage, plan, snapshot)

    return train_student(cfg, storage, plan, lambda state: fit_on_ray(cfg, storage, plan, state, fault_hook), rescore)


def concurrent_students(cfg: Config, cluster: dict[str, float]) -> int:
    """How many students' loops run at once: ``cluster.concurrent_students``, else as
    many worker groups as the cluster's CPUs (GPUs when training on GPUs) hold."""
    if cfg.cluster.concurrent_students:
        return cfg.cluster.concurrent_students
    from cluster.runtime.resources import train_scaling

    scaling = train_scaling(cfg)
    key = "GPU" if scaling.use_gpu else "CPU"
    per_group = scaling.num_workers * float(scaling.resources_per_worker.get(key, 1.0) or 1.0)
    return max(1, int(cluster.get(key, 0.0) // max(per_group, 1e-9)))


def train_on_ray(
    cfg: Config, storage: Storage, shapes_dir: str, units_dir: str, fault_hook: FaultHook | None = None
) -> dict[str, Any]:
    """Train every unfinished student of the run with Ray Train (Ray must be connected);
    ``fault_hook``: tests only (see the module's docstring)."""
    import ray

    plans = plan_students(cfg, storage, shapes_dir, units_dir)
    skipped = [p.name for p in plans if is_finished(storage, cfg.run, p)]
    todo = [p for p in plans if p.name not in skipped]
    at_once = min(max(1, len(todo)), concurrent_students(cfg, ray.cluster_resources()))
    if at_once > 1:
        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="student") as pool:
            students = list(pool.map(lambda p: train_student_on_ray(cfg, storage, p, fault_hook), todo))
    else:
        students = [train_student_on_ray(cfg, storage, p, fault_hook) for p in todo]
    return {
        "students": students,
        "skipped": skipped,
        "workers": cfg.cluster.train_workers,
        "concurrent_students": at_once,
        "backend": "ray",
    }
