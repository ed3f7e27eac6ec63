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


def client_mesh(clients_per_round: int, devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """A 1-D mesh over the largest number of ``devices`` that divides ``clients_per_round``.

    Returns ``None`` when that number is 1 (nothing to shard).
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    d = max(k for k in range(1, len(devices) + 1) if clients_per_round % k == 0)
    if d == 1:
        return None
    return Mesh(np.array(devices[:d]), (CLIENT_AXIS,))


def client_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (client) axis split over the mesh."""
    return NamedSharding(mesh, PartitionSpec(CLIENT_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
