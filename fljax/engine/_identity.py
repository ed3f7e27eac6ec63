"""What a run IS, as a short fingerprint saved with every resume step and compared on resume:
a resumed run must continue the same simulation (the same seed, federation, algorithm and
components), only ``rounds`` may grow."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np


def _digest(value: Any) -> str:
    """A 16-hex-digit SHA-256 of a value: arrays by their bytes, shape and dtype; containers
    and named tuples field by field; callables by their qualified name."""
    h = hashlib.sha256()

    def feed(v):
        if isinstance(v, np.ndarray | jax.Array) or np.isscalar(v) and hasattr(v, "dtype"):
            a = np.ascontiguousarray(np.asarray(v))
            h.update(f"array{a.shape}{a.dtype}".encode())
            h.update(a.view(np.uint8).reshape(-1) if a.dtype != object else repr(a).encode())
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                h.update(f"key:{k}".encode())
                feed(v[k])
        elif isinstance(v, list | tuple):
            h.update(f"{type(v).__name__}[{len(v)}]".encode())
            for x in v:
                feed(x)
        elif callable(v):
            h.update(f"fn:{getattr(v, '__qualname__', type(v).__name__)}".encode())
        else:
            h.update(json.dumps(v, default=repr).encode())

    feed(value)
    return h.hexdigest()[:16]


def data_digest(data) -> str:
    """A 16-hex-digit SHA-256 of a federation that does not depend on how its clients are
    laid out: one digest per client (its train and test rows and counts), gathered from every
    process of a multi-process run (each hashes the clients it holds)."""
    from fljax import distributed

    first = 0 if data.hosted is None else data.hosted[0]
    rows = len(np.asarray(data.train.x))
    per_client = np.zeros((rows, 32), np.uint8)
    for i in range(rows):
        h = hashlib.sha256()
        for split in (data.train, data.test):
            for a in (split.x[i], split.y[i], split.num_examples[first + i]):
                a = np.ascontiguousarray(np.asarray(a))
                h.update(f"{a.shape}{a.dtype}".encode())
                h.update(a.tobytes())
        per_client[i] = np.frombuffer(h.digest(), np.uint8)
    everyone = per_client
    if data.hosted is not None:
        everyone = distributed.allgather_rows(per_client, data.num_clients)
    return hashlib.sha256(everyone.tobytes()).hexdigest()[:16]


def _component(c) -> str | None:
    """A component (compressor, privacy, system, aggregator, attack) by name and settings."""
    if c is None:
        return None
    return f"{getattr(c, 'name', type(c).__name__)}:{_digest(getattr(c, 'hparams', c))}"


def fingerprint(a, params0) -> dict[str, Any]:
    """The identity of the run of :class:`fljax.engine.RunArgs` ``a`` whose initial global
    model is ``params0``: every argument that changes its result except ``rounds`` (which a
    resume may extend), ``eval_every`` (evaluation only), the client mapping, the chunking
    and the devices (the same result up to float rounding)."""
    data = a.data
    return {
        "seed": None if a.seeds is not None else int(a.seed),
        "seeds": None if a.seeds is None else [int(s) for s in a.seeds],
        "sweep": None if a.sweep is None else _digest(dict(a.sweep)),
        "clients_per_round": int(a.clients_per_round),
        "stragglers": float(a.stragglers),
        "straggler_policy": str(a.straggler_policy),
        "algorithm": f"{a.algorithm.name}:{_digest(a.algorithm.hparams)}",
        "model": str(getattr(a.model, "name", type(a.model).__name__)),
        "initial_params": "from seed" if a.params is None else _digest(jax.device_get(params0)),
        "data": f"{data.name}:{data_digest(data)}",
        "compression": _component(a.compression),
        "downlink": _component(a.downlink),
        "privacy": _component(a.privacy),
        "secure_aggregation": _component(a.secure_aggregation),
        "system": _component(a.system),
        "aggregator": _component(a.aggregator),
        "attack": _component(a.attack),
        "reject_norm": None if a.reject_norm is None else float(a.reject_norm),
        "subsets": None if a.subsets is None
        else [np.flatnonzero(np.asarray(m)).tolist() for m in a.subsets],
    }


def differences(saved: dict, now: dict) -> list[str]:
    """The keys whose values differ between a saved fingerprint and this run's."""
    return sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
