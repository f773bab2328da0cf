"""The Ray plumbing shared by the prep stages: start or join Ray, size an actor pool, run a resumable stage on it.

A resumable stage is a pool of actors of one class, one actor method, and a list of units (small frozen dataclasses
with an `index` and a `weight`). Each unit writes its own output and then its done marker, whose content the method
returns, so running a unit twice is harmless. `run_stage` runs the units the stage's markers do not already cover,
under one progress bar; it resubmits the units of an actor that died (Ray restarts the actor) and stops at the first
error raised by a unit's own code.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from xclr_prep.errors import PrepError
from xclr_prep.fsutil import is_no_space
from xclr_schemas.options import UserError

MAX_ATTEMPTS = 3
RESTART_TIMEOUT = 600  # seconds a dead worker has to come back before it leaves the pool
_LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2
# Ray replaces 127.0.0.1 with the primary interface's address on Linux (services.resolve_ip_for_localhost);
# another loopback address keeps a local instance's traffic on loopback.
_LOCAL_NODE_IP = "127.0.0.2"


def start_ray(address: str | None) -> None:
    """Join the cluster at `address`, or start a local instance sized to this machine."""
    if address:
        ray.init(address=address, logging_level=logging.ERROR)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR,
                 object_store_memory=_LOCAL_OBJECT_STORE_BYTES, _node_ip_address=_LOCAL_NODE_IP)


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def require_shared(paths: list[str]) -> None:
    """PrepError unless every alive node of the cluster sees every local path in `paths` (the actors on all nodes
    read the inputs and write the output, so these must be on a filesystem every node mounts)."""
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2 or not paths:
        return
    probe = ray.remote(num_cpus=0)(_missing)
    missing = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                       .remote(paths) for node in nodes])
    for node, lost in zip(nodes, missing):
        if lost:
            raise PrepError(f"{lost[0]} is not visible on Ray node {node[:12]}: inputs and outputs must be on a "
                            "filesystem every node mounts (for a URL --out, set XCLR_WORK_DIR there)")


def cluster_device(device: str) -> str:
    """Resolve ``auto`` to ``cuda`` when the connected cluster has GPUs, else ``cpu``."""
    if device != "auto":
        return device
    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def pool_shape(device: str, num_workers: int | None, gpus_per_worker: float,
               cpus_per_worker: int | None) -> tuple[int, int, float]:
    """(number of actors, CPUs per actor, GPUs per actor) on the connected cluster.

    GPU actors get `gpus_per_worker` GPUs each; by default every GPU is used. CPU actors share the cluster's CPUs:
    by default one actor per `cpus_per_worker` CPUs (None: one actor per node); each gets floor(CPUs / actors)
    threads, capped by the largest node.
    """
    if device == "cuda":
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < gpus_per_worker:
            raise PrepError(f"--device cuda, but the Ray cluster has {gpus:g} GPUs")
        return num_workers or max(1, int(gpus // gpus_per_worker)), 1, gpus_per_worker
    node_cpus = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]]
    default = len(node_cpus) if cpus_per_worker is None else max(1, sum(node_cpus) // cpus_per_worker)
    n = num_workers or default
    threads = max(1, min(max(node_cpus), sum(node_cpus) // n))
    if sum(c // threads for c in node_cpus) < n:
        raise PrepError(f"{n} workers of {threads} CPUs do not fit on this Ray cluster (CPUs per node: {node_cpus})")
    return n, threads, 0


def start_pool(cls: type, n: int, cpus: int, gpus: float, *args) -> list:
    """`n` actors of `cls` (restarted by Ray when they die), constructed with `args`; waits until they are up.

    Ray does not retry their tasks (`run_stage` does, on a live actor): a task Ray retried would wait for its own
    actor, which never comes back when its node is gone.
    """
    remote = ray.remote(cls).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0)
    actors = [remote.remote(*args) for _ in range(n)]
    try:
        ray.get([a.__ray_ready__.remote() for a in actors])
    except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
        raise PrepError(user_error(e)) from e
    return actors


def user_error(e: Exception) -> str:
    """The one-line message of a Ray error: its cause's when the cause is a PrepError, a UserError (a store's
    StorageError names the URL) or an OSError (naming the file); else a PrepError's message inside its text (an
    actor whose constructor raised one); else its first line."""
    if isinstance(cause := getattr(e, "cause", None), (PrepError, UserError, OSError)):
        return str(cause).strip().splitlines()[-1]
    for line in reversed(str(e).splitlines()):
        if "PrepError: " in line:
            return line.split("PrepError: ", 1)[1]
    return str(e).splitlines()[0]


def task_error(e: ray.exceptions.RayTaskError, what: str) -> Exception:
    """The error the driver raises for task `what` that failed with `e`: the unit's own OSError when a write
    failed for want of space (`fsutil.no_space_as_error` names OUT and the space left), else a PrepError."""
    if is_no_space(e.cause):
        return e.cause
    return PrepError(f"{what} failed: {user_error(e)}")


def get(ref: ray.ObjectRef, what: str) -> object:
    """``ray.get(ref)`` of one task outside `run_stage` (named `what`), its failure raised as `task_error`."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise task_error(e, what) from e


class Unit(Protocol):
    """One unit of work of a stage: `index` names its done marker; `weight` is what it adds to the progress bar
    (files, captions, samples)."""

    @property
    def index(self) -> int: ...

    @property
    def weight(self) -> int: ...


def run_stage(actors: list, method: str, units: Sequence[Unit], markers: dict[int, dict], desc: str, counts: str,
              progress: bool, prepare: Callable[[Unit], tuple] | None = None) -> dict[int, dict]:
    """Run ``actor.method(unit)`` for every unit that `markers` (the stage's done markers read back, by unit index)
    does not hold, and add each result, the unit's done marker, to `markers`; returns `markers`. The bar (`desc`)
    counts unit weights in `counts`. With `prepare`, the arguments are ``prepare(unit)``, built only when the unit
    is submitted (bounded memory)."""
    todo = [unit for unit in units if unit.index not in markers]
    total = sum(unit.weight for unit in units)
    with tqdm(total=total, initial=total - sum(unit.weight for unit in todo), unit=counts, unit_scale=True, desc=desc,
              disable=not progress) as bar:
        def finished(unit: Unit, marker: dict) -> None:
            markers[unit.index] = marker
            bar.update(unit.weight)

        _run_units(actors, method, todo, finished, prepare or (lambda unit: (unit,)))
    return markers


def _run_units(actors: list, method: str, units: list[Unit], on_result: Callable[[Unit, dict], None],
               prepare: Callable[[Unit], tuple]) -> None:
    """Run ``actor.method(*prepare(unit))`` for every unit over the pool, two in flight per actor; call
    on_result(unit, result).

    A unit whose actor died is resubmitted to a live actor, up to MAX_ATTEMPTS in all. The dead actor (which Ray
    restarts) gets work again once it answers; one that has not answered within RESTART_TIMEOUT seconds (its node
    is gone and no other has room) leaves the pool, and a pool with no actor left stops the run with a PrepError.
    An exception raised by the unit's own code stops the run with that error: a PrepError, or a write that failed
    for want of space (an OSError, for `fsutil.no_space_as_error`) as it is.
    """
    pending = deque((unit, 1) for unit in units)
    free = [a for a in actors for _ in range(2)]
    running: dict = {}
    restarting: dict = {}  # readiness probe of a dead actor -> (the actor, when it died)
    while pending or running:
        while pending and free:
            actor = free.pop()
            unit, attempt = pending.popleft()
            running[getattr(actor, method).remote(*prepare(unit))] = (actor, unit, attempt)
        if not running and not restarting:
            raise PrepError(f"every worker was lost and none came back within {RESTART_TIMEOUT} s (did the cluster "
                            f"lose their nodes?); {len(pending)} units left: rerun once nodes are back")
        done, _ = ray.wait(list(running) + list(restarting), num_returns=1)
        if done[0] in restarting:
            actor, died = restarting.pop(done[0])
            try:
                ray.get(done[0])
                free.append(actor)
            except ray.exceptions.RayActorError:
                if time.monotonic() - died < RESTART_TIMEOUT:
                    time.sleep(1)  # still restarting: ask again
                    restarting[actor.__ray_ready__.remote()] = (actor, died)
            continue
        actor, unit, attempt = running.pop(done[0])
        try:
            result = ray.get(done[0])
        except ray.exceptions.RayActorError as e:
            if attempt >= MAX_ATTEMPTS:
                raise PrepError(f"{method} of unit {unit.index} failed {attempt} times; last: {user_error(e)}") from e
            pending.appendleft((unit, attempt + 1))
            restarting[actor.__ray_ready__.remote()] = (actor, time.monotonic())
            continue
        except ray.exceptions.RayTaskError as e:
            raise task_error(e, f"{method} of unit {unit.index}") from e
        free.append(actor)
        on_result(unit, result)
