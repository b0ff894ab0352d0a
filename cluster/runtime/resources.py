"""The resources each stage asks of Ray, as small pure functions of the config.

The choices they make are tested without a cluster, and ``tests/cluster/test_cluster_yaml.py``
checks that every request fits some node type of ``ray_cluster.yaml``. A pass's step
declares its ``Pool``; ``cluster.passes.runner`` turns it into a Ray Data pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.config import Config

TEACHER_ACTOR_CPUS = 1.0
"""CPUs held by each teacher actor: image pre-processing and back-projection run there."""


TRAIN_WORKER_CPUS = 1.0
"""CPUs held by each training worker besides its GPUs (data loading is in-process)."""


def render_resources(cfg: Config) -> dict[str, float]:
    """Ray remote args of one render task: ``cluster.render_cpus`` CPUs, no GPU."""
    cpus = cfg.cluster.render_cpus
    if cpus <= 0:
        raise ValueError(f"cluster.render_cpus={cpus} must be > 0 (a render task is CPU work)")
    return {"num_cpus": float(cpus)}


RENDER_BATCH_SHAPES = 1
"""Shapes per render task: one shape's views at 800² are ~60 MB, and one shape per task
spreads a small corpus over every render CPU."""


@dataclass(frozen=True)
class Pool:
    """What one step of a pass asks of Ray (``cluster.passes.runner`` turns it into a pool).

    tasks: a function step, run as Ray tasks (no pool) · size: actors of the pool (0: one
    per two CPUs of the cluster, leaving room for reading) · grow: the pool starts at
    ``size`` and grows to as many actors as the cluster's CPUs hold · num_cpus, num_gpus:
    what each actor or task holds · batch_size: items (rows) per call.
    """

    size: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 1
    grow: bool = False
    tasks: bool = False

    def __post_init__(self) -> None:
        if self.size < 0 or self.num_cpus <= 0 or self.num_gpus < 0 or self.batch_size < 1:
            raise ValueError(f"{self}: size and num_gpus must be >= 0, num_cpus > 0 and batch_size >= 1")

    def remote_args(self) -> dict[str, float]:
        """``map_batches`` resource arguments."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def teacher_actor_options(cfg: Config) -> Pool:
    """The teacher pool: ``cluster.teacher_actors`` actors of ``cluster.teacher_gpus`` GPUs each.

    Shapes per call: enough to fill one teacher forward pass of ``teacher.batch_size``
    images when views are few, else one shape (its views already fill a pass).
    """
    c = cfg.cluster
    if c.teacher_actors < 1:
        raise ValueError(f"cluster.teacher_actors={c.teacher_actors} must be >= 1")
    if c.teacher_gpus < 0:
        raise ValueError(f"cluster.teacher_gpus={c.teacher_gpus} must be >= 0")
    views = 10 if cfg.render.views == "partslip" else cfg.render.num_views
    shapes = max(1, cfg.teacher.batch_size // max(views, 1))
    return Pool(size=c.teacher_actors, num_cpus=TEACHER_ACTOR_CPUS, num_gpus=float(c.teacher_gpus), batch_size=shapes)


@dataclass(frozen=True)
class TrainScaling:
    """Ray Train workers: ``num_workers`` of ``resources_per_worker`` each (at most, when elastic)."""

    num_workers: int
    use_gpu: bool
    resources_per_worker: dict[str, float]
    min_workers: int = 0
    """Elastic when 0 < min_workers < num_workers: Ray Train runs on as many workers as fit,
    between the two, and resizes the group when a node goes or comes."""

    @property
    def elastic(self) -> bool:
        return 0 < self.min_workers < self.num_workers

    @property
    def ray_num_workers(self) -> int | tuple[int, int]:
        """``ScalingConfig(num_workers=...)``: a count, or ``(min, max)`` for elastic training."""
        return (self.min_workers, self.num_workers) if self.elastic else self.num_workers

    def global_batch(self, per_worker: int) -> int:
        """Shapes per optimiser step over the whole group: ``per_worker`` × the most workers.
        Elastic groups keep it when they shrink (``per_worker_batch``); 0 when not elastic."""
        return per_worker * self.num_workers if self.elastic else 0

    @property
    def threads(self) -> int:
        """Torch threads a worker uses: its CPUs (at least one)."""
        return max(1, int(self.resources_per_worker.get("CPU", 1)))

    def scaling_config(self) -> Any:
        """As a ``ray.train.ScalingConfig``."""
        from ray.train import ScalingConfig

        return ScalingConfig(
            num_workers=self.ray_num_workers,
            use_gpu=self.use_gpu,
            resources_per_worker=dict(self.resources_per_worker),
        )


def per_worker_batch(global_batch: int, world_size: int) -> int:
    """Each worker's batch when ``world_size`` workers share ``global_batch`` (rounded down,
    at least 1): an elastic group that lost a node keeps its global batch, so the learning
    rate (unchanged) and the schedule's steps per epoch stay what they were planned for."""
    if global_batch < 1 or world_size < 1:
        raise ValueError(f"global_batch={global_batch} and world_size={world_size} must be >= 1")
    return max(1, global_batch // world_size)


def train_scaling(cfg: Config) -> TrainScaling:
    """Training workers from ``cluster.train_workers``, ``cluster.gpus_per_worker`` (0: CPU)
    and ``cluster.train_resource`` (one unit of that custom resource each, when set)."""
    c = cfg.cluster
    if c.train_workers < 1:
        raise ValueError(f"cluster.train_workers={c.train_workers} must be >= 1")
    if c.gpus_per_worker < 0:
        raise ValueError(f"cluster.gpus_per_worker={c.gpus_per_worker} must be >= 0")
    if not 0 <= c.min_train_workers <= c.train_workers:
        raise ValueError(
            f"cluster.min_train_workers={c.min_train_workers} must be in [0, train_workers={c.train_workers}]"
        )
    resources = {"CPU": TRAIN_WORKER_CPUS}
    if c.gpus_per_worker > 0:
        resources["GPU"] = float(c.gpus_per_worker)
    if c.train_resource:  # pins the workers to the node type that offers it (ray_cluster.yaml: gpu_train)
        resources[c.train_resource] = 1.0
    return TrainScaling(
        num_workers=c.train_workers,
        use_gpu=c.gpus_per_worker > 0,
        resources_per_worker=resources,
        min_workers=c.min_train_workers,
    )


def extract_fused(cfg: Config) -> bool:
    """Whether extraction runs render, teacher and back-projection in one actor stage.

    ``cluster.extract_layout=auto`` fuses when the teacher needs no GPU: then every stage
    is CPU work, and a shape rendered where it is taught never sends its views (9 MB at
    320², 58 MB at 800²) through the object store. With GPU teachers the stages stay split,
    so rendering spreads over the CPU nodes while the GPUs only run the teacher.
    """
    layout = cfg.cluster.extract_layout
    return layout == "fused" or (layout == "auto" and cfg.cluster.teacher_gpus == 0)


def fused_pool(cfg: Config) -> Pool:
    """Fused extraction actors: each holds ``max(render_cpus, 1)`` CPUs (and the teacher's
    GPUs); the pool starts at ``cluster.teacher_actors`` and grows to fill the cluster's CPUs."""
    teacher = teacher_actor_options(cfg)
    cpus = max(render_resources(cfg)["num_cpus"], TEACHER_ACTOR_CPUS)
    return Pool(size=teacher.size, num_cpus=cpus, num_gpus=teacher.num_gpus, grow=True)


RESCORE_ACTOR_CPUS = 1.0
"""CPUs held by each re-scoring actor (reading tables, preparing samples, the student on CPU)."""


def rescore_actor_options(cfg: Config) -> Pool:
    """The re-scoring pool: ``cluster.rescore_actors`` actors of ``cluster.rescore_gpus``
    GPUs each; one knowledge part (≤ 32 shapes) per call."""
    c = cfg.cluster
    if c.rescore_actors < 1:
        raise ValueError(f"cluster.rescore_actors={c.rescore_actors} must be >= 1")
    if c.rescore_gpus < 0:
        raise ValueError(f"cluster.rescore_gpus={c.rescore_gpus} must be >= 0")
    return Pool(size=c.rescore_actors, num_cpus=RESCORE_ACTOR_CPUS, num_gpus=float(c.rescore_gpus))


def resource_requests(cfg: Config) -> dict[str, dict[str, float]]:
    """Every single-bundle request the pipeline makes, as ``{stage: {resource: amount}}``.

    One render task, one teacher actor, one training worker, one re-scoring actor: each
    must fit on one node.
    """
    teacher = teacher_actor_options(cfg)
    req = {
        "render": {"CPU": render_resources(cfg)["num_cpus"]},
        "teacher": {"CPU": teacher.num_cpus, "GPU": teacher.num_gpus},
        "train_worker": dict(train_scaling(cfg).resources_per_worker),
        "rescore": {"CPU": RESCORE_ACTOR_CPUS, "GPU": float(cfg.cluster.rescore_gpus)},
    }
    return {stage: {k: v for k, v in r.items() if v > 0} for stage, r in req.items()}


def fits(request: dict[str, float], node: dict[str, float]) -> bool:
    """Whether one node with resources ``node`` can hold ``request``."""
    return all(node.get(k, 0.0) >= v for k, v in request.items())
