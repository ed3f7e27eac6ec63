"""Devices for the client axis: host-CPU device count and the ``clients`` mesh."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CLIENT_AXIS = "clients"


def set_host_device_count(n: int | None = None) -> None:
    """Exposes ``n`` CPU devices (default: one per core) so the client axis can use every core.

    XLA reads ``XLA_FLAGS`` when the backend starts, so call this before the first JAX
    computation (importing jax or fljax is fine). An explicit device count already in
    ``XLA_FLAGS`` wins. Only the CPU platform is affected.
    """
    n = int(n or os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def host_device_count_flag() -> int | None:
    m = re.search(r"xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(m.group(1)) if m else None


def _devices_of(devices: Sequence[jax.Device] | None) -> list[jax.Device]:
    """``devices``, or by default this process's devices; in a multi-process run every
    process's devices (the mesh must span them all: :mod:`fljax.distributed`)."""
    from fljax import distributed

    if not distributed.multiprocess():
        devices = list(jax.local_devices() if devices is None else devices)
        if not devices:
            raise ValueError("devices must not be empty")
        return devices
    everyone = distributed.global_devices()
    if devices is not None and set(devices) != set(everyone):
        raise ValueError(f"devices: a multi-process run uses every process's devices (all "
                         f"{len(everyone)}), not a subset of {len(list(devices))}")  # fmt: skip
    return everyone


def client_mesh(clients_per_round: int, devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """A 1-D mesh over the largest number of ``devices`` that divides ``clients_per_round``.

    Returns ``None`` when that number is 1 (nothing to shard). In a multi-process run the mesh
    spans every process's devices, so ``clients_per_round`` must be a multiple of their count.
    """
    from fljax import distributed

    devices = _devices_of(devices)
    if distributed.multiprocess():
        if clients_per_round % len(devices):
            raise ValueError(
                f"clients_per_round={clients_per_round}: a multi-process run splits each "
                f"round's cohort over all {len(devices)} devices of its "
                f"{jax.process_count()} processes, so the cohort must be a multiple of "
                f"{len(devices)}"
            )
        return Mesh(np.array(devices), (CLIENT_AXIS,))
    d = max(k for k in range(1, len(devices) + 1) if clients_per_round % k == 0)
    if d == 1:
        return None
    return Mesh(np.array(devices[:d]), (CLIENT_AXIS,))


def client_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (client) axis split over the mesh's ``clients`` axis."""
    return NamedSharding(mesh, PartitionSpec(CLIENT_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def run_mesh(num_runs: int, clients_per_round: int, devices=None) -> Mesh | None:
    """A 2-D ``("runs", "clients")`` mesh for many runs in one program: the cohort split as by
    :func:`client_mesh`, the runs over the largest number of the remaining devices that
    divides ``num_runs``. ``None`` when there is nothing to split."""
    devices = _devices_of(devices)
    clients = client_mesh(clients_per_round, devices)
    c = 1 if clients is None else clients.devices.size
    r = max(k for k in range(1, len(devices) // c + 1) if num_runs % k == 0)
    if r * c == 1:
        return None
    return Mesh(np.array(devices[: r * c]).reshape(r, c), (RUN_AXIS, CLIENT_AXIS))


RUN_AXIS = "runs"


def run_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (run) axis split over the mesh's ``runs`` axis, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(RUN_AXIS))


def client_count(mesh: Mesh) -> int:
    """Devices along the ``clients`` axis."""
    return int(mesh.shape[CLIENT_AXIS])


def shard_clients(tree, mesh: Mesh, num_clients: int | None = None, first: int = 0):
    """``tree``'s leading (client) axis split over the mesh's ``clients`` axis (replicated
    over ``runs``): padded with zeros to a multiple of the device count, so that each device
    holds about ``1 / D`` of the federation. Rows past the real clients are never selected.

    In a multi-process run a leaf may hold only this process's clients, rows ``first,
    first + 1, ...`` of ``num_clients`` (:func:`fljax.distributed.hosted_rows`); each process
    supplies its devices' blocks and no process needs the whole federation."""
    from fljax import distributed

    d = client_count(mesh)
    sharding = client_sharding(mesh)

    def pad(a):
        a = np.asarray(a)
        extra = -a.shape[0] % d
        if extra:
            a = np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)])
        return a

    if not distributed.multiprocess():
        return jax.device_put(jax.tree.map(pad, tree), sharding)

    def one(a):
        a = np.asarray(a)
        c = a.shape[0] if num_clients is None else num_clients
        offset = 0 if a.shape[0] == c else first
        shape = (c + (-c % d), *a.shape[1:])

        def block(idx):
            lo, hi = idx[0].indices(shape[0])[:2]
            real_hi = min(hi, c)
            if lo < real_hi and (lo < offset or real_hi > offset + len(a)):
                raise RuntimeError(f"process {jax.process_index()} holds clients {offset}.."
                                   f"{offset + len(a) - 1} but its devices need {lo}.."
                                   f"{real_hi - 1}")  # fmt: skip
            out = np.zeros((hi - lo, *a.shape[1:]), a.dtype)
            if lo < real_hi:
                out[: real_hi - lo] = a[lo - offset : real_hi - offset]
            return out

        return jax.make_array_from_callback(shape, sharding, block)

    return jax.tree.map(one, tree)
