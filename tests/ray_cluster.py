"""A local Ray cluster for the tests: `ray start --head --block` in a subprocess of its own,
torn down with it (never `ray stop`, which would stop every cluster on the machine).

Ray binds its servers to every interface whatever --node-ip-address says (it maps loopback
to the node's address), so the cluster lives only as long as the tests that use it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

from server_utils import free_port

ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # a cluster of this machine's tests


@contextlib.contextmanager
def local_ray_cluster(num_cpus: int = 4, timeout: float = 120):
    """Yields the cluster's address; sets RAY_ADDRESS (and ENV) in this process meanwhile,
    so that engines here and `octavo serve` subprocesses join it."""
    import ray

    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="oray-")  # short: Ray's socket paths live under it
    env = {**os.environ, **ENV}
    ray_cli = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    proc = subprocess.Popen([*ray_cli, "start", "--head", "--block", f"--num-cpus={num_cpus}", f"--port={port}",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    saved = {k: os.environ.get(k) for k in [*ENV, "RAY_ADDRESS"]}
    try:
        address = f"127.0.0.1:{port}"
        os.environ.update(ENV, RAY_ADDRESS=address)
        deadline = time.monotonic() + timeout
        while not os.path.exists(os.path.join(temp_dir, "ray_current_cluster")) or not _reachable(address):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.5)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp_dir, ignore_errors=True)


def _reachable(address: str) -> bool:
    import socket

    host, port = address.split(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
        return True
    return False
