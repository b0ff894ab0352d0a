"""Connecting to Ray: the one answer to "does this job run its stages on Ray?".

``use_ray`` decides it (``cluster.backend``); ``join_ray`` connects a job that does.
``connect`` joins the cluster a job runs in (``cluster.address``, else ``RAY_ADDRESS`` as
``ray job submit`` sets it) or starts a private local Ray on loopback, its dashboard on
127.0.0.1 so Ray's state API answers Ray Train's questions.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cluster.config import ClusterConfig, Config

log = logging.getLogger(__name__)


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
