"""A killed ``ray start --head`` leaves ``ray_current_cluster`` behind; a local run must not care.

Reproduced without touching this machine's ``/tmp/ray`` (other Rays may live there): the
child process gets its own ``RAY_TMPDIR``, where Ray looks for the file, and a stale
address in it (a port nothing listens on). There a bare ``ray.init(num_cpus=...)`` picks up
the stale address and fails as the issue describes; ``cluster.runtime.connect`` with no
address configured starts its own local instance all the same.
"""

import json
import os
import shutil
import tempfile

from tests.conftest import free_port, fresh_env, run_fresh

CHILD = """
import json, ray
from cluster.runtime.connect import connect
from cluster.config import ClusterConfig

out = {}
try:
    ray.init(num_cpus=1)
    out["bare"] = "started"
    ray.shutdown()
except Exception as e:
    out["bare"] = f"{type(e).__name__}: {e}"
connect(ClusterConfig(num_cpus=1))
out["gcs"] = ray.get_runtime_context().gcs_address
out["cpus"] = ray.cluster_resources().get("CPU")
out["task"] = ray.get(ray.remote(lambda: 41 + 1).remote())
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


def test_connect_starts_its_own_ray_despite_a_stale_ray_current_cluster():
    tmp = tempfile.mkdtemp(prefix="pdst", dir="/tmp")  # short: Ray's socket paths are < 108 bytes
    try:
        stale = f"127.0.0.1:{free_port()}"
        os.makedirs(os.path.join(tmp, "ray"))
        with open(os.path.join(tmp, "ray", "ray_current_cluster"), "w") as f:
            f.write(stale)
        run = run_fresh(["-c", CHILD], env=fresh_env(RAY_TMPDIR=tmp), timeout=300)
        (line,) = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
        out = json.loads(line[len("RESULT ") :])
        # The failure, reproduced: a bare init tries to join the stale address.
        assert "num_cpus and num_gpus must not be provided" in out["bare"], out["bare"]
        # connect() ignores the file: a fresh private Ray, on loopback, with the CPUs asked for.
        assert out["gcs"] != stale and out["gcs"].startswith("127.0.0.1:")
        assert out["cpus"] == 1 and out["task"] == 42
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
