"""Autoscaling: the node types of ``ray_cluster.yaml`` scaled down for a one-machine test
cluster, how many nodes of a type a stage needs, and holding training capacity between fits.

The decisions are pure functions (tested without a cluster); ``hold_capacity`` is the one
piece that talks to Ray.

Why hold capacity: the autoscaler ends a node once it has been idle for
``idle_timeout_minutes``. Between two fits of a student, backward distillation's
re-scoring pass runs on a Ray Data actor pool and the training workers are gone; a pass
longer than the idle timeout would release the training nodes, and the next fit would
wait for new ones to boot. ``hold_capacity`` asks the autoscaler to keep room for the
training workers' bundles while a re-scoring pass runs (``cluster.training.train_ray`` wraps the
pass in it) and withdraws the request after, so the nodes idle out as usual at the end.
Only the pass: while a fit runs, Ray Train 2.60 asks for the same bundles itself, through
the same coordinator, which adds requests up; a hold around the fits too would ask for
twice the training nodes (the autoscaling test saw a second training node start).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from cluster.config import Config
from cluster.runtime.resources import fits

log = logging.getLogger(__name__)

FAKE_HEAD_TYPE = "ray.head.default"
"""Ray's fake multi-node provider tags its head with this type name, whatever the config calls it."""


def worker_node_types(cluster_yaml: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The worker node types of a cluster config: ``{name: {resources, min_workers, max_workers}}``."""
    head = cluster_yaml["head_node_type"]
    out = {}
    for name, t in cluster_yaml["available_node_types"].items():
        if name == head:
            continue
        out[name] = {
            "resources": {k: float(v) for k, v in t.get("resources", {}).items()},
            "min_workers": int(t.get("min_workers", 0)),
            "max_workers": int(t.get("max_workers", cluster_yaml.get("max_workers", 0))),
        }
    return out


def scale_resources(resources: dict[str, float], max_cpus: int, max_other: int) -> dict[str, float]:
    """A node's resources scaled down for one machine: CPUs capped at ``max_cpus`` (at least
    1 where the node has any), every other resource (GPUs, custom slots) at ``max_other``
    (at least 1 where the node has any). Logical amounts only: a fake GPU is a number."""
    out = {}
    for k, v in resources.items():
        cap = max_cpus if k == "CPU" else max_other
        out[k] = float(min(v, cap)) if v <= 0 else float(max(1, min(math.floor(v), cap)))
    return out


def fake_node_types(
    cluster_yaml: dict[str, Any], *, max_cpus: int = 2, max_other: int = 2, max_workers: int = 2
) -> dict[str, dict[str, Any]]:
    """The ``available_node_types`` of a fake multi-node cluster mirroring ``cluster_yaml``.

    Same worker type names; resources scaled by ``scale_resources``; ``max_workers``
    capped (a one-machine cluster cannot hold 8 render nodes), ``min_workers`` kept below
    it. The head keeps its resources (ray_cluster.yaml's head has ``CPU: 0``: no tasks
    there) under the fake provider's head type name.
    """
    if max_cpus < 1 or max_other < 1 or max_workers < 1:
        raise ValueError(f"caps must be >= 1 (max_cpus={max_cpus}, max_other={max_other}, max_workers={max_workers})")
    types: dict[str, dict[str, Any]] = {}
    for name, t in worker_node_types(cluster_yaml).items():
        top = min(t["max_workers"], max_workers)
        types[name] = {
            "resources": scale_resources(t["resources"], max_cpus, max_other),
            "min_workers": min(t["min_workers"], top),
            "max_workers": top,
            "node_config": {},
        }
    head = cluster_yaml["available_node_types"][cluster_yaml["head_node_type"]]
    types[FAKE_HEAD_TYPE] = {
        "resources": {k: float(v) for k, v in head.get("resources", {}).items()},
        "node_config": {},
        "max_workers": 0,
    }
    return types


def node_type_of(resources: dict[str, float], types: dict[str, dict[str, Any]]) -> str | None:
    """The node type whose declared resources equal a live node's (``ray.nodes()``'s
    ``Resources`` minus Ray's own ``node:*``, ``memory`` and ``object_store_memory``)."""
    own = {k: float(v) for k, v in resources.items() if _declared(k) and v > 0}
    for name, t in types.items():
        if {k: float(v) for k, v in t["resources"].items() if v > 0} == own:
            return name
    return None


def _declared(resource: str) -> bool:
    return not (resource.startswith("node:") or resource in ("memory", "object_store_memory"))


def nodes_needed(bundles: list[dict[str, float]], node: dict[str, float]) -> int:
    """How many nodes of one type hold ``bundles`` at once (first fit, largest first).

    This is the most a stage whose concurrent requests are ``bundles`` can make the
    autoscaler start of that type; raises ``ValueError`` if a bundle fits no such node.
    """
    free: list[dict[str, float]] = []
    for b in sorted(bundles, key=lambda b: sorted(b.items()), reverse=True):
        if not fits(b, node):
            raise ValueError(f"bundle {b} does not fit a node of {node}")
        for f in free:
            if fits(b, f):
                break
        else:
            f = dict(node)
            free.append(f)
        for k, v in b.items():
            f[k] = f.get(k, 0.0) - v
    return len(free)


def training_bundles(cfg: Config) -> list[dict[str, float]]:
    """One bundle per training worker: what a student's fits ask of the cluster."""
    from cluster.runtime.resources import train_scaling

    scaling = train_scaling(cfg)
    return [dict(scaling.resources_per_worker) for _ in range(scaling.num_workers)]


def held_bundles(cfg: Config) -> list[dict[str, float]]:
    """What ``hold_capacity`` keeps for a student's training workers between its fits.

    With ``cluster.train_resource`` set: one unit of it a worker, and nothing else. That
    pins the training node type (no other type offers it) and stays clear of the
    re-scoring pass's own requests: its actors ask for GPUs and CPUs, and Ray's
    coordinator adds requests up, so a hold of the workers' full bundles beside them would
    ask for room for both (a second node). Without a train resource: the full bundles.
    """
    slot = cfg.cluster.train_resource
    if slot:
        return [{slot: 1.0} for _ in training_bundles(cfg)]
    return training_bundles(cfg)


HOLD_EXPIRE_S = 180.0
"""A held request lapses this long after its last refresh (a driver that died)."""
HOLD_REFRESH_S = 20.0
"""How often a hold is re-sent while it lasts."""


class _Coordinator:
    """Ray's autoscaling coordinator (Ray Data and Ray Train send their requests through it).

    ``ray.autoscaler.sdk.request_resources`` *replaces* the cluster's standing request,
    and Ray 2.60's coordinator actor re-sends the merged requests of Ray Data and Ray
    Train every 20 s: a request made beside it is overwritten at the next tick or the
    next Ray Data stage. So a hold registers as one more requester there.
    """

    def __init__(self, requester_id: str) -> None:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        self._actor = get_or_create_autoscaling_coordinator()
        self._id = requester_id

    def request(self, bundles: list[dict[str, float]], expire_after_s: float) -> None:
        import ray

        ray.get(
            self._actor.request_resources.remote(
                requester_id=self._id, resources=bundles, expire_after_s=expire_after_s
            )
        )

    def cancel(self) -> None:
        import ray

        ray.get(self._actor.cancel_request.remote(self._id))


class _Direct:
    """Fallback where the coordinator is not importable: the autoscaler SDK itself."""

    def request(self, bundles: list[dict[str, float]], expire_after_s: float) -> None:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)

    def cancel(self) -> None:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])


@contextlib.contextmanager
def hold_capacity(
    bundles: list[dict[str, float]], *, name: str = "partdistill", refresh_s: float = HOLD_REFRESH_S
) -> Iterator[list[dict[str, float]]]:
    """Ask the autoscaler to keep room for ``bundles`` while the block runs; withdraw after.

    Needs a connected Ray. The request is re-sent every ``refresh_s`` seconds (it lapses
    ``HOLD_EXPIRE_S`` after the last one, so a killed driver does not pin nodes forever)
    and cancelled when the block ends, whether it raised or not. On a cluster without an
    autoscaler (a local Ray) the request is recorded and has no effect.
    """
    bundles = [dict(b) for b in bundles if any(v > 0 for v in b.values())]
    if not bundles:
        yield bundles
        return
    try:
        client: _Coordinator | _Direct = _Coordinator(f"{name}-hold-{uuid.uuid4().hex[:8]}")
    except ImportError:
        client = _Direct()
    client.request(bundles, HOLD_EXPIRE_S)
    log.info("holding capacity for %d bundles: %s", len(bundles), bundles)
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(refresh_s):
            try:
                client.request(bundles, HOLD_EXPIRE_S)
            except Exception:  # the hold is an optimisation: never fail the run over it
                log.warning("could not refresh the capacity hold", exc_info=True)

    thread = threading.Thread(target=refresh, name="hold-capacity", daemon=True)
    thread.start()
    try:
        yield bundles
    finally:
        stop.set()
        thread.join()
        try:
            client.cancel()
        except Exception:
            log.warning("could not release the capacity hold", exc_info=True)
        log.info("released the capacity hold")
