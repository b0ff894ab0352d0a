"""A private autoscaling Ray cluster on this machine: Ray's fake multi-node provider behind a
real head and a real autoscaler (the v1 monitor), with node types derived from
``ray_cluster.yaml`` by ``cluster.runtime.autoscaling.fake_node_types``.

Not ``ray.cluster_utils.AutoscalingCluster``: that one runs ``ray stop --force`` on start
and shutdown, which kills every Ray on the machine (other people's too), and it reads an
``example.yaml`` the Ray 2.60 wheel does not ship. Here the head runs from
``ray start --head --block`` in its own session with its own ``RAY_TMPDIR``; the provider
is loaded as an ``external`` module (so no defaults file is needed) and told the head's
GCS address; stopping kills exactly the processes carrying that ``RAY_TMPDIR``.

One cluster can serve several scenarios, each its own driver: another process ``attach``es
to it by its ``handle``; the autoscaler re-reads its config file at every update, so
``reconfigure`` changes the idle timeout (or the node types) of the running cluster; and
``provider_workers`` says which worker nodes the autoscaler still holds (a killed node stays
there until its heartbeat times out), so a scenario can start from the head alone.

A ``Recorder`` polls the node table and keeps every change: which nodes of which type
were alive, while which stage ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster.runtime.autoscaling import FAKE_HEAD_TYPE, fake_node_types, node_type_of
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def load_cluster_yaml() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def default_node_types() -> dict[str, dict[str, Any]]:
    """The fake cluster's node types: ``ray_cluster.yaml``'s with 4 logical CPUs a node (room
    for a stage's actors beside the training workers, as the real nodes have 48 CPUs beside
    4 GPUs; only what runs costs real CPU)."""
    return fake_node_types(load_cluster_yaml(), max_cpus=4)


def fake_cluster_config(node_types: dict[str, dict[str, Any]], gcs_address: str, idle_timeout_s: float) -> dict:
    """An autoscaler config for the fake provider on a head at ``gcs_address``."""
    src = load_cluster_yaml()
    return {
        "cluster_name": "partdistill-fake",
        "max_workers": sum(t.get("max_workers", 0) for n, t in node_types.items() if n != FAKE_HEAD_TYPE),
        "upscaling_speed": src.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {
            "type": "external",
            "module": PROVIDER,
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": node_types,
        "head_node_type": FAKE_HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def autoscaler_status() -> dict[str, Any]:
    """The monitor's last report (it writes one to the GCS after every update): ``time`` (when
    that update began) and ``autoscaler_report`` (the autoscaler's non-terminated nodes)."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    return json.loads(raw) if raw else {}


def standing_request() -> list[dict[str, float]]:
    """What ``ray.autoscaler.sdk.request_resources`` last asked for (the v1 autoscaler's KV key)."""
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


@dataclass
class Sample:
    t: float
    stage: str
    nodes: dict[str, str]
    """alive node id → node type"""
    request: list[dict[str, float]] = field(default_factory=list)
    """the standing ``request_resources`` bundles the autoscaler reads"""


@dataclass
class Recorder:
    """Polls ``ray.nodes()`` from a thread; keeps a sample whenever the alive set or the stage changes."""

    types: dict[str, dict[str, Any]]
    interval_s: float = 0.5
    stage: str = "start"
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def poll(self) -> None:
        import ray

        nodes = {n["NodeID"]: node_type_of(n["Resources"], self.types) or "?" for n in ray.nodes() if n["Alive"]}
        request = standing_request()
        last = self.samples[-1] if self.samples else None
        if last is None or last.nodes != nodes or last.stage != self.stage or last.request != request:
            self.samples.append(Sample(time.monotonic(), self.stage, nodes, request))

    def start(self) -> Recorder:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.poll()
                except Exception:  # a poll during shutdown
                    pass

        self.poll()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self.poll()

    def peak(self, stage: str) -> dict[str, int]:
        """The most nodes of each type alive at once while ``stage`` ran."""
        out: dict[str, int] = {}
        for s in self.samples:
            if s.stage != stage:
                continue
            counts: dict[str, int] = {}
            for t in s.nodes.values():
                counts[t] = counts.get(t, 0) + 1
            for t, c in counts.items():
                out[t] = max(out.get(t, 0), c)
        return out

    def launched(self, stage: str) -> set[str]:
        """Types of the nodes that appeared while ``stage`` ran."""
        seen: set[str] = set()
        prev: dict[str, str] = {}
        out: set[str] = set()
        for s in self.samples:
            new = {n: t for n, t in s.nodes.items() if n not in prev and n not in seen}
            if s.stage == stage:
                out |= set(new.values())
            seen |= set(s.nodes)
            prev = s.nodes
        return out

    def table(self) -> str:
        t0 = self.samples[0].t if self.samples else 0.0
        lines = []
        for s in self.samples:
            counts: dict[str, int] = {}
            for t in s.nodes.values():
                counts[t] = counts.get(t, 0) + 1
            req: dict[str, int] = {}
            for b in s.request:
                key = json.dumps(b, sort_keys=True)
                req[key] = req.get(key, 0) + 1
            held = ", ".join(f"{n}x{k}" for k, n in req.items())
            lines.append(f"{s.t - t0:7.1f}s  {s.stage:<10} {json.dumps(counts, sort_keys=True)}  requested: [{held}]")
        return "\n".join(lines)


class FakeAutoscalingCluster:
    """Head (and autoscaler) of a fake multi-node cluster; workers come and go on demand."""

    def __init__(self, node_types: dict[str, dict[str, Any]] | None = None, idle_timeout_s: float = 6.0) -> None:
        self.node_types = node_types or default_node_types()
        self.idle_timeout_s = idle_timeout_s
        self.tmp = tempfile.mkdtemp(prefix="pdas", dir="/tmp")  # short: Ray's socket paths are < 108 bytes
        self.config_path = os.path.join(self.tmp, "autoscaler.yaml")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.owner = True
        """Whether this process started the cluster (and ``shutdown`` stops it)."""
        self.env = {
            **os.environ,
            "RAY_TMPDIR": self.tmp,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_AUTH_MODE": "disabled",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every node binds 127.0.0.1 (cluster.runtime.connect.loopback_only)
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)

    def handle(self) -> str:
        """What another process needs to ``attach`` to this cluster (fits an environment variable)."""
        return json.dumps({"tmp": self.tmp, "port": self.port})

    @classmethod
    def attach(cls, handle: str) -> FakeAutoscalingCluster:
        """The cluster of ``handle`` as seen from another process (a test in a fresh
        interpreter): it connects, reconfigures, kills nodes and reads the autoscaler's log
        like the starting process; its ``shutdown`` only disconnects."""
        info = json.loads(handle)
        self = cls.__new__(cls)
        self.tmp, self.port = info["tmp"], int(info["port"])
        self.address = f"127.0.0.1:{self.port}"
        self.config_path = os.path.join(self.tmp, "autoscaler.yaml")
        config = json.loads(Path(self.config_path).read_text())
        self.node_types = config["available_node_types"]
        self.idle_timeout_s = 60.0 * config["idle_timeout_minutes"]
        self.proc, self.owner, self.env = None, False, {}
        return self

    def _write_config(self) -> None:
        config = fake_cluster_config(self.node_types, self.address, self.idle_timeout_s)
        part = self.config_path + ".part"
        with open(part, "w") as f:
            json.dump(config, f)
        os.replace(part, self.config_path)  # whole: the monitor may read it at any moment

    def start(self, timeout_s: float = 120.0) -> FakeAutoscalingCluster:
        self._write_config()
        path = self.config_path
        head = self.node_types[FAKE_HEAD_TYPE]["resources"]
        cmd = [
            "ray", "start", "--head", "--block", f"--port={self.port}", "--node-ip-address=127.0.0.1",
            f"--autoscaling-config={path}", f"--num-cpus={int(head.get('CPU', 0))}", "--num-gpus=0",
            "--include-dashboard=false", "--disable-usage-stats",
        ]  # fmt: skip
        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")  # this venv's
        cmd[0] = ray_bin if os.path.exists(ray_bin) else "ray"
        self.log = open(os.path.join(self.tmp, "head.log"), "w")
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: {self.head_log()[-3000:]}")
            if self.monitor_log():  # the autoscaler is up once it logs
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the head did not come up in {timeout_s}s: {self.head_log()[-3000:]}")

    def connect(self) -> None:
        import ray

        from cluster.runtime.connect import loopback_only

        os.environ["RAY_AUTH_MODE"] = "disabled"
        loopback_only()  # else the driver turns 127.0.0.1 into this machine's routable address
        for attempt in range(3):  # a GCS on a loaded machine can miss the driver's first deadline
            try:
                ray.init(address=self.address, logging_level="WARNING")
                return
            except (ConnectionError, RuntimeError):
                ray.shutdown()
                if attempt == 2:
                    raise
                time.sleep(5)

    def reconfigure(
        self,
        idle_timeout_s: float | None = None,
        node_types: dict[str, dict[str, Any]] | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        """A new idle timeout and/or node types for the running cluster (needs ``connect``).

        The autoscaler re-reads its config file at the start of every update; this returns
        once an update that began after the write has reported (``autoscaler_status``), so
        the new config is in force. Node types change what the next launches get: swap them
        only while ``provider_workers`` is empty.
        """
        if idle_timeout_s is not None:
            self.idle_timeout_s = idle_timeout_s
        if node_types is not None:
            self.node_types = node_types
        written = time.time()
        self._write_config()
        deadline = time.monotonic() + timeout_s
        while autoscaler_status().get("time", 0.0) <= written:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the autoscaler did not update in {timeout_s}s: {self.monitor_log()[-3000:]}")
            time.sleep(0.2)

    def provider_workers(self) -> dict[str, int]:
        """Worker nodes the autoscaler holds, alive or not, by type (its last report: active,
        pending and queued launches). A killed node counts until its heartbeat times out and
        the autoscaler terminates it ("lost contact with raylet")."""
        report = autoscaler_status().get("autoscaler_report") or {}
        out: dict[str, int] = {}
        for t, n in (report.get("active_nodes") or {}).items():
            if t != FAKE_HEAD_TYPE and n:
                out[t] = out.get(t, 0) + int(n)
        for pending in report.get("pending_nodes") or []:  # (..., ip, type, status)
            out[pending[-2]] = out.get(pending[-2], 0) + 1
        for t, n in (report.get("pending_launches") or {}).items():
            if n:
                out[t] = out.get(t, 0) + int(n)
        return out

    def head_log(self) -> str:
        return Path(self.tmp, "head.log").read_text(errors="replace")

    def monitor_log(self) -> str:
        for p in Path(self.tmp).glob("ray/session_*/logs/monitor.log"):
            return p.read_text(errors="replace")
        return ""

    def decisions(self) -> list[str]:
        """The autoscaler's decisions, as its monitor logs them: "Adding 1 node(s) of type
        gpu_teacher.", "Removing 1 nodes of type gpu_teacher (idle)."."""
        tag = ":event_summary:"
        lines = self.monitor_log().splitlines()
        return [ln.split(tag, 1)[1] for ln in lines if tag in ln and ("Adding" in ln or "Removing" in ln)]

    def node_pids(self, node_id: str) -> list[int]:
        """Processes of one fake worker node (its raylet and workers): the provider starts
        each with ``RAY_OVERRIDE_NODE_ID_FOR_TESTING`` set to the node's id."""
        return self._pids(f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}")

    def kill_node(self, node_id: str) -> int:
        """A node lost (a spot instance taken back): SIGKILL its processes."""
        pids = self.node_pids(node_id)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def _pids(self, needle: str, prefix: bool = False) -> list[int]:
        """Processes of this cluster with ``needle`` in their environment (an entry that
        starts with it where ``prefix``)."""
        out = []
        key = needle.encode()
        mine = f"RAY_TMPDIR={self.tmp}".encode()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                env = Path("/proc", d, "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mine in env and (any(e.startswith(key) for e in env) if prefix else key in env):
                out.append(int(d))
        return out

    def shutdown(self) -> None:
        """Disconnect; and where this process started the cluster, stop it."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if not self.owner:
            return
        # The fake worker nodes first: with nodes up, the head's own stop (below) drains
        # them and took over 30 s; they hold nothing that needs a clean stop. Then the head,
        # a clean stop for up to 10 s.
        for pid in self._pids("RAY_OVERRIDE_NODE_ID_FOR_TESTING=", prefix=True):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        # Whatever is left of this cluster (fake nodes, their workers): by our RAY_TMPDIR only.
        for pid in self._pids(f"RAY_TMPDIR={self.tmp}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
