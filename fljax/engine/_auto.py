"""``client_map="auto"``: the fastest client-mapping strategy, measured on the run itself.

Which strategy is fastest depends on the model (dense layers batch well under ``vmap``;
convolutions may not), the cohort size and the devices, so ``auto`` times every applicable
strategy on one round of the run's own first block (compiled for one round, run once to warm
up, then timed twice) and keeps the fastest. Every strategy computes the same round (equal up to
float summation order); the choice and the timings are recorded (``SimulationResult.client_map``,
``summary.json``) and saved with checkpoints, so a resumed run keeps the strategy it started
with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from fljax import distributed
from fljax.engine._map import CLIENT_MAPS

AUTO = "auto"
TIMED_RUNS = 2  # per strategy after the warm-up; the faster counts (timings on a busy host vary)


def candidates(mode_is_serial: bool, mesh, client_chunk: int | None) -> tuple[str, ...]:
    """The strategies worth timing: ``vmap``; ``device_vmap`` on a mesh of 2+ devices (on one
    device it is ``vmap``); ``sequential`` unless ``client_chunk`` asks for chunked ``vmap``.
    Modes that train one client at a time map no cohort: only ``vmap``."""
    if mode_is_serial:
        return ("vmap",)
    out = ["vmap"]
    if mesh is not None and mesh.devices.size > 1:
        out.append("device_vmap")
    if client_chunk is None:
        out.append("sequential")
    return tuple(s for s in CLIENT_MAPS if s in out)


def fastest(block_for: Callable[[str], Callable], inputs: tuple,
            strategies: tuple[str, ...]) -> tuple[str, dict[str, float], float, Any]:  # fmt: skip
    """``(fastest strategy, seconds per round of each, seconds spent compiling, the fastest
    one's compiled one-round block)``: each strategy's block compiled for ``inputs`` (one
    round), run once to warm up, then timed ``TIMED_RUNS`` times (the fastest counts)."""
    if len(strategies) == 1:
        return strategies[0], {}, 0.0, None
    seconds, compile_s, compiled = {}, 0.0, {}
    for s in strategies:
        t0 = time.perf_counter()
        compiled[s] = block_for(s).lower(*inputs).compile()
        compile_s += time.perf_counter() - t0
        jax.block_until_ready(compiled[s](*inputs))
        times = []
        for _ in range(TIMED_RUNS):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[s](*inputs))
            times.append(time.perf_counter() - t0)
        seconds[s] = min(times)
    # Several processes each time their own devices: all follow process 0's timings.
    timed = distributed.broadcast(np.asarray([seconds[s] for s in strategies], np.float64))
    seconds = {s: float(t) for s, t in zip(strategies, timed, strict=True)}
    best = min(seconds, key=seconds.get)
    return best, seconds, compile_s, compiled[best]


def default(client_map: str) -> str:
    """The strategy a run's state is set up with before ``auto`` has chosen (state does not
    depend on the strategy)."""
    return "vmap" if client_map == AUTO else client_map
