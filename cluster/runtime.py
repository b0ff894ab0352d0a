"""Connecting to Ray and the resources each stage asks for.

``use_ray`` is the one answer to "does this job run its stages on Ray?" (``cluster.backend``);
``join_ray`` connects a job that does. ``connect`` joins the cluster a job runs in (``cluster.address``, else ``RAY_ADDRESS`` as
``ray job submit`` sets it) or starts a private local Ray on loopback. The resource specs
are small pure functions of the config, so the choices they make are tested without a
cluster, and ``tests/cluster/test_cluster_yaml.py`` checks that every request fits some
node type of ``ray_cluster.yaml``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from cluster.config import ClusterConfig, Config

log = logging.getLogger(__name__)

TEACHER_ACTOR_CPUS = 1.0
"""CPUs held by each teacher actor: image pre-processing and back-projection run there."""
TRAIN_WORKER_CPUS = 1.0
"""CPUs held by each training worker besides its GPUs (data loading is in-process)."""


def local_num_cpus(cfg: ClusterConfig) -> int:
    """CPUs of a local Ray: ``cluster.num_cpus``, or every CPU of this machine when 0."""
    if cfg.num_cpus < 0:
        raise ValueError(f"cluster.num_cpus={cfg.num_cpus} must be >= 0 (0: all of this machine's)")
    return cfg.num_cpus or (os.cpu_count() or 1)


def cluster_address(cfg: ClusterConfig, environ: dict[str, str] | None = None) -> str:
    """The cluster to join: ``cluster.address``, else ``RAY_ADDRESS``; empty: start a local Ray."""
    env = os.environ if environ is None else environ
    return cfg.address or env.get("RAY_ADDRESS", "")


def loopback_only() -> None:
    """Make a local Ray bind and advertise 127.0.0.1 instead of the machine's routable IP.

    Ray on Linux resolves "127.0.0.1" to the routable address (it assumes a multi-node
    cluster), so ``_node_ip_address`` alone does not keep it off the network. The switch
    Ray uses on laptops (macOS/Windows) turns that off: the environment variable reaches
    the GCS, raylet and workers we spawn; the driver has already read the constant.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # a Ray without the switch: it binds as it will
        log.debug("ray_constants.ENABLE_RAY_CLUSTER not found; local Ray may bind the routable IP")


def local_state_api(runtime_env: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """A port for a local Ray's dashboard, and ``runtime_env`` that sends its workers there.

    Ray's state API (``ray.util.state``) is served by the dashboard; Ray Train's
    ``PlacementGroupCleaner`` actor asks it every second whether the Train controller
    still lives, and without it logs ``Failed to query Ray Train Controller actor state``
    each time. A worker finds the dashboard through ``RAY_API_SERVER_ADDRESS``, else by
    guessing its cluster (``RAY_ADDRESS``, ``ray_current_cluster``, the one GCS process
    of the machine: wrong or ambiguous where other Rays run), so the runtime environment
    names it. The port is free on 127.0.0.1 now, picked as Ray picks its own ports; a
    ``RAY_API_SERVER_ADDRESS`` of the caller's ``runtime_env`` wins.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(runtime_env or {})
    env["env_vars"] = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}", **(env.get("env_vars") or {})}
    return port, env


def connect(cfg: ClusterConfig, runtime_env: dict[str, Any] | None = None) -> None:
    """Join the configured Ray cluster or start a local one; a no-op when already connected.

    Local: ``local_num_cpus(cfg)`` CPUs, 127.0.0.1 only, warnings-only logs, and the
    dashboard on 127.0.0.1 for Ray's state API, which Ray Train's controller watchdog
    polls (``local_state_api``; ~3 s more start-up, ~140 MB). ``runtime_env`` (e.g.
    ``{"env_vars": {...}}``) applies to every task and actor of this driver; a local Ray
    rarely needs one since workers inherit this environment.
    """
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(cfg)
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        return
    num_cpus = local_num_cpus(cfg)
    loopback_only()
    dashboard_port, runtime_env = local_state_api(runtime_env)
    log.info("starting a local Ray with %d CPUs on 127.0.0.1", num_cpus)
    ray.init(
        # "local": a new private instance even where a killed `ray start --head` left
        # /tmp/ray/ray_current_cluster behind (a bare init would try to join that one).
        address="local",
        num_cpus=num_cpus,
        # Ray's default (the dashboard where ray[default] is installed; a failure to start
        # it is logged, not raised): it serves the state API that Ray Train polls.
        include_dashboard=None,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _node_ip_address="127.0.0.1",
        runtime_env=runtime_env,
        logging_level=logging.WARNING,
        _system_config={"num_workers_soft_limit": local_worker_soft_limit(num_cpus)},
    )


def use_ray(cfg: Config) -> bool:
    """Whether this job runs its stages on Ray: ``cluster.backend=ray``, or ``auto`` with a
    cluster to join (``cluster.address`` or ``RAY_ADDRESS``); ``local`` never. Every stage
    asks this one question, so a job runs wholly on Ray or wholly in this process."""
    if cfg.cluster.backend == "auto":
        return bool(cluster_address(cfg.cluster))
    return cfg.cluster.backend == "ray"


def join_ray(cfg: Config) -> None:
    """Connect a job that runs on Ray (``connect``; a no-op when connected) and set Ray
    Data's progress reporting to ``progress`` (``configure_data_context``)."""
    connect(cfg.cluster)
    configure_data_context(cfg.progress)


def local_worker_soft_limit(num_cpus: int) -> int:
    """Idle worker processes a local Ray keeps (Ray's default: one per CPU).

    Fractional-CPU stages (``cluster.render_cpus`` < 1 on a small machine) run more
    workers than CPUs; past the default limit Ray kills them as soon as they idle, and
    the next task pays a new process and its imports again (torch: ~2 CPU-seconds,
    measured on the 2-core machine). Twice the CPUs covers half-CPU render tasks beside
    the teacher actor.
    """
    return 2 * max(num_cpus, 1)


def configure_data_context(progress: bool) -> Any:
    """Set Ray Data's progress reporting for this driver; returns the ``DataContext``.

    With ``progress`` on, Ray Data draws its bars on a terminal and, when stdout is not a
    terminal (``ray job logs``, CI), logs one progress line per operator every
    ``RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL`` seconds (10) instead of redrawing bars.
    The end-of-run stats dump is off either way: it is long and per-operator-internal.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.enable_operator_progress_bars = progress
    ctx.enable_rich_progress_bars = False
    ctx.enable_auto_log_stats = False
    ctx.verbose_stats_logs = False
    return ctx


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
    """What one step of a pass asks of Ray (``cluster.runner`` turns it into a pool).

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
