"""A Ray cluster of several nodes on loopback, each node a real `ray start --block` process tree that a test can
kill."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prep_helpers import local_ray_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    """One `ray start --block` in a session of its own. Every process of the node (the raylet, its agents, the
    workers the raylet forks) belongs to that session, so `kill` takes down this node and nothing else: neither
    the other nodes on this machine nor any other Ray (`ray stop` would stop every Ray of the machine)."""

    def __init__(self, args: list[str], env: dict, log: Path, hide: Path | None = None) -> None:
        """`hide`: a directory this node sees empty (an empty tmpfs mounted over it in a mount namespace of the
        node's own, as a node without the shared filesystem would see it; needs root and unshare)."""
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", *args]
        if hide is not None:
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'mount -t tmpfs none "{hide}" && exec "$0" "$@"', *cmd]
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, env=env, stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while b"block forever" not in log.read_bytes():  # printed once the node's processes are up
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def processes(self) -> list:
        import psutil

        found = []
        for p in psutil.process_iter():
            try:  # a killed process whose parent died too stays a zombie here: nothing left to kill
                if os.getsid(p.pid) == self.proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (OSError, psutil.Error):
                pass
        return found

    def kill(self) -> int:
        """kill -9 every process of the node (until none is left); how many there were."""
        import psutil

        killed: set[int] = set()
        for _ in range(100):
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                try:
                    p.kill()
                    killed.add(p.pid)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.1)
        self.proc.wait()
        return len(killed)


class RayCluster:
    """A head and worker nodes on 127.0.0.2 (Ray rewrites 127.0.0.1 to the primary interface's address on Linux),
    with token authentication (Ray 2.5x clusters need RAY_AUTH_MODE=token and the cluster's token in every process:
    use `env`, which carries a token of its own in RAY_AUTH_TOKEN, so that nothing depends on ~/.ray), free ports
    and a temp dir of its own. Leaving the `with` block kills every node. `lost_node_s`: the head declares a node
    that stopped answering dead after about this many seconds (Ray's default: about 30 s)."""

    def __init__(self, root: Path, lost_node_s: float | None = None) -> None:
        self.root = root
        self.lost_node_s = lost_node_s
        self.env = {**local_ray_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.temp = tempfile.mkdtemp(prefix="xr-")  # short: Ray's socket paths must fit in 107 bytes
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []
        self.lost = 0  # nodes killed through lose(): the head lists them, not alive
        self.address = ""

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc) -> None:
        for node in [*self.workers, self.head]:
            if node is not None:
                node.kill()
        shutil.rmtree(self.temp, ignore_errors=True)

    def _node_args(self, cpus: int) -> list[str]:
        return ["--node-ip-address=127.0.0.2", f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats",
                f"--temp-dir={self.temp}", "--object-store-memory=200000000",
                f"--dashboard-agent-listen-port={free_port()}"]

    def start_head(self, cpus: int = 1) -> str:
        port = free_port()
        self.address = f"127.0.0.2:{port}"
        env = self.env
        if self.lost_node_s is not None:  # Ray's system config from the environment of the head (its GCS)
            period_ms = str(int(self.lost_node_s * 1000 / 3))
            env = {**env, "RAY_health_check_period_ms": period_ms, "RAY_health_check_timeout_ms": period_ms,
                   "RAY_health_check_failure_threshold": "3"}
        self.head = RayNode(["--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
                             f"--ray-client-server-port={free_port()}", *self._node_args(cpus)], env,
                            self.root / "head.log")
        return self.address

    def add_worker(self, cpus: int = 1, hide: Path | None = None) -> RayNode:
        node = RayNode([f"--address={self.address}", *self._node_args(cpus)], self.env,
                       self.root / f"worker-{len(self.workers)}.log", hide)
        self.workers.append(node)
        return node

    def lose(self, node: RayNode) -> int:
        """kill -9 a worker node (RayNode.kill); how many processes it had."""
        self.workers.remove(node)
        self.lost += 1
        return node.kill()

    def wait_alive(self, n: int, timeout: float = 180) -> None:
        """Wait until the cluster counts n alive nodes and every lost node as dead (a killed node counts as alive
        until its heartbeats are missed)."""
        code = ("import logging, sys, time, ray\n"
                f"ray.init(address={self.address!r}, logging_level=logging.ERROR)\n"
                "count = lambda alive: sum(node['Alive'] == alive for node in ray.nodes())\n"
                f"deadline = time.monotonic() + {timeout}\n"
                f"while (count(True), count(False)) != ({n}, {self.lost}):\n"
                "    if time.monotonic() > deadline:\n"
                "        sys.exit(f'{count(True)} nodes alive, {count(False)} dead')\n"
                "    time.sleep(0.5)\n")
        proc = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                              timeout=timeout + 60)
        assert proc.returncode == 0, f"not {n} alive nodes: {proc.stderr[-2000:]}"
