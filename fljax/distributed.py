"""One simulation over many processes and hosts, on JAX's own distributed runtime.

``jax.distributed`` connects the processes (a coordinator, one process per host or per
accelerator; Gloo collectives on CPU). The global mesh spans every process's devices; each
process holds only its block of the federation's clients (:func:`hosted_rows`), and the
compiled round is the same SPMD program in every process, so selection, aggregation and
evaluation are global and equal to a single-process run. Process 0 writes the results.

Start the processes with ``fljax-launch --processes N -- <fljax-run args>`` on one machine,
or with the cluster's launcher (SLURM ``srun``, ``mpirun``, Kubernetes indexed jobs) and
``fljax-run distributed=auto`` (see ``docs/multiprocess.md``).
"""

from __future__ import annotations

import functools
import os
import re
import socket
import time
from typing import Any

import jax
import numpy as np

ENV_COORDINATOR = "FLJAX_COORDINATOR"
"""Environment variable holding the coordinator's ``host:port`` (set by ``fljax-launch``)."""
ENV_NUM_PROCESSES = "FLJAX_NUM_PROCESSES"
"""Environment variable holding the number of processes."""
ENV_PROCESS_ID = "FLJAX_PROCESS_ID"
"""Environment variable holding this process's index."""
INIT_TIMEOUT_S = 60  # a process that cannot reach the coordinator fails after this
"""Seconds a process waits for the coordinator before it fails."""
HEARTBEAT_TIMEOUT_S = 30  # a dead process is noticed by the others after this
"""Seconds after which the other processes notice a dead one and stop."""

PyTree = Any
"""Any pytree of arrays (type alias)."""


def _check_address(address: str) -> None:
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d+)", address)
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"coordinator_address={address!r} must be 'host:port' (port 1..65535), "
                         "e.g. '127.0.0.1:12345' or 'node001:12345'")  # fmt: skip


def from_env() -> dict | None:
    """``initialize``'s arguments from ``FLJAX_COORDINATOR``, ``FLJAX_NUM_PROCESSES`` and
    ``FLJAX_PROCESS_ID`` (what ``fljax-launch`` sets), or ``None`` when none is set."""
    names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
    if not any(n in os.environ for n in names):
        return None
    missing = [n for n in names if n not in os.environ]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: a multi-process run needs all of "
                         f"{', '.join(names)}")  # fmt: skip
    try:
        num, pid = int(os.environ[ENV_NUM_PROCESSES]), int(os.environ[ENV_PROCESS_ID])
    except ValueError as e:
        raise ValueError(f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers: "
                         f"{e}") from None  # fmt: skip
    return {"coordinator_address": os.environ[ENV_COORDINATOR], "num_processes": num,
            "process_id": pid}  # fmt: skip


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = INIT_TIMEOUT_S,
    heartbeat_s: int = HEARTBEAT_TIMEOUT_S,
) -> None:
    """Joins this process to a multi-process run (``jax.distributed.initialize``).

    Call it before any JAX computation. Without arguments it reads the ``FLJAX_*`` variables
    ``fljax-launch`` sets, else lets JAX detect the cluster (SLURM, Open MPI, Kubernetes).
    On CPU the collectives are Gloo's. A bad ``process_id`` or address fails at once naming
    it; a coordinator that cannot be reached fails after ``timeout_s``; a process that dies
    later is noticed by the others within ``heartbeat_s`` (they exit with an error).
    """
    if coordinator_address is None and num_processes is None and process_id is None:
        env = from_env()
        if env is not None:
            coordinator_address, num_processes, process_id = env.values()
    if num_processes is not None and (int(num_processes) < 1):
        raise ValueError(f"num_processes={num_processes} must be >= 1")
    if process_id is not None and num_processes is not None:
        if not 0 <= int(process_id) < int(num_processes):
            raise ValueError(f"process_id={process_id} must lie in [0, {num_processes}) "
                             f"(num_processes={num_processes})")  # fmt: skip
    if coordinator_address is not None:
        _check_address(coordinator_address)
        if process_id is not None:
            _reach(coordinator_address, int(process_id), timeout_s)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id,
            initialization_timeout=int(timeout_s), heartbeat_timeout_seconds=int(heartbeat_s),
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - re-raised naming what was asked for
        raise RuntimeError(
            f"could not join the multi-process run (coordinator_address={coordinator_address!r},"
            f" num_processes={num_processes}, process_id={process_id}): {e}"
        ) from e


class ProcessLostError(RuntimeError):
    """Another process of a multi-process run failed or was killed (its collectives broke)."""


_BROKEN = ("gloo", "heartbeat", "coordination service", "connection reset", "connection closed")


def lost(err: BaseException) -> ProcessLostError | None:
    """The clear error behind ``err`` when it (or an error it was raised from) is a
    collective or the coordination service breaking because another process of the run
    died; ``None`` otherwise."""
    if not multiprocess():
        return None
    seen, e = set(), err
    while e is not None and id(e) not in seen:
        if isinstance(e, ProcessLostError):
            return e
        if any(sign in str(e).lower() for sign in _BROKEN):
            break
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    else:
        return None
    return ProcessLostError(
        f"process {jax.process_index()} of {jax.process_count()}: another process of this "
        f"multi-process run failed or was killed (see its output), so the run stops; "
        f"resume=true continues from the last saved step with all processes. ({err})"
    )


def _reach(address: str, process_id: int, timeout_s: float) -> None:
    """Process 0 can host the coordinator at ``address`` (its port is free); any other
    process can connect to it within ``timeout_s`` (JAX itself would abort the process
    without naming the address)."""
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    if process_id == 0:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind(("", int(port)))
            except OSError as e:
                raise RuntimeError(f"coordinator_address={address!r}: process 0 cannot host "
                                   f"the coordinator on port {port} ({e})") from None  # fmt: skip
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"coordinator_address={address!r}: process {process_id} could not reach "
                    f"the coordinator (process 0) within {timeout_s} s ({e}); is process 0 "
                    "running, and is the address the one it listens on?"
                ) from None
            time.sleep(0.2)


def multiprocess() -> bool:
    """Whether this process is one of several in one run."""
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this process writes the run's results (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches ``name`` (nothing in a single process)."""
    if multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast(value: np.ndarray) -> np.ndarray:
    """Process 0's ``value`` in every process (``value`` itself in a single process)."""
    if not multiprocess():
        return np.asarray(value)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def global_devices() -> list[jax.Device]:
    """Every process's devices, process by process (the order of the federation's rows)."""
    return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def rows_per_device(num_clients: int, num_devices: int | None = None) -> int:
    """Clients each device holds when ``num_clients`` are split over ``num_devices`` (all
    devices by default), the last ones padded."""
    d = jax.device_count() if num_devices is None else num_devices
    return -(-int(num_clients) // d)


def _rows_per_process(num_clients: int) -> int:
    """Rows each process's block spans (its devices' blocks; the last ones padded)."""
    return rows_per_device(num_clients) * jax.local_device_count()


def hosted_rows(num_clients: int) -> range:
    """The clients (rows of the federation) this process holds in a multi-process run: the
    blocks of its devices when the clients are split evenly over all devices, process by
    process; ``range(num_clients)`` in a single process."""
    if not multiprocess():
        return range(num_clients)
    per_process = _rows_per_process(num_clients)
    start = jax.process_index() * per_process
    return range(min(start, num_clients), min(start + per_process, num_clients))


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def put(tree: PyTree, sharding) -> PyTree:
    """``tree`` (the same host value in every process) placed with ``sharding`` (one, or a
    tree of them matching ``tree``): ``jax.device_put`` in one process; over several, each
    process supplies its devices' shards (``jax.make_array_from_callback``)."""
    if not multiprocess():
        return jax.device_put(tree, sharding)

    def one(x, where):
        if _is_key(x):
            return jax.random.wrap_key_data(one(jax.random.key_data(x), where))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, where, lambda idx: host[idx])

    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, sharding), tree)
    return jax.tree.map(one, tree, sharding)


def to_host(tree: PyTree) -> PyTree:
    """``tree`` as host arrays in every process: arrays split over other processes' devices
    are first replicated by an all-gather (a collective: every process must call it, in the
    same order)."""
    if not multiprocess():
        return jax.device_get(tree)

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return jax.device_get(x)
        everywhere = jax.sharding.NamedSharding(x.sharding.mesh, jax.sharding.PartitionSpec())
        return jax.device_get(_replicate(everywhere)(x))

    return jax.tree.map(one, tree)


@functools.cache
def _replicate(sharding):
    return jax.jit(lambda x: x, out_shardings=sharding)


def allgather_rows(local: np.ndarray, num_rows: int) -> np.ndarray:
    """``[num_rows, ...]``: every process's block of rows (:func:`hosted_rows`) gathered."""
    if not multiprocess():
        return np.asarray(local)
    from jax.experimental import multihost_utils

    padded = np.zeros((_rows_per_process(num_rows), *local.shape[1:]), local.dtype)
    padded[: len(local)] = local
    gathered = np.asarray(multihost_utils.process_allgather(padded, tiled=True))
    return gathered[:num_rows]
