"""Memory of local training from XLA's own analysis, and the client chunk it implies."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax.algorithms import Algorithm
from fljax.data import FederatedData
from fljax.engine._round import client_update_for, init_state, train_spec
from fljax.models import Model


def client_memory_bytes(algorithm: Algorithm, model: Model, data: FederatedData, width: int) -> int:
    """XLA's memory estimate (arguments + outputs + temporaries) of local training for
    ``width`` clients at once under ``vmap``, from the compiled program (nothing runs)."""
    spec = train_spec(data, algorithm)
    _, update = client_update_for(algorithm, model, data, spec)
    sample = data.sample()
    st = jax.eval_shape(lambda: init_state(algorithm, model.init(jax.random.key(0), sample), width))

    def stacked(a):
        return jax.ShapeDtypeStruct((width, *a.shape[1:]), a.dtype)

    x = jax.ShapeDtypeStruct((width, *spec.x.shape[1:]), spec.x.dtype)
    y = jax.ShapeDtypeStruct((width, *spec.y.shape[1:]), spec.y.dtype)
    n = jax.ShapeDtypeStruct((width,), jnp.int32)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), width))
    budget = jax.ShapeDtypeStruct((width,), jnp.int32)
    states = jax.tree.map(stacked, st.client_states)

    def train(params, server_state, x, y, n, keys, states, budget):
        return jax.vmap(update, in_axes=(None, 0, 0, 0, 0, 0, None, 0))(
            params, x, y, n, keys, states, server_state, budget
        )

    mem = (
        jax.jit(train)
        .lower(st.params, st.algorithm_state, x, y, n, keys, states, budget)
        .compile()
        .memory_analysis()
    )
    if mem is None:
        raise RuntimeError(f"the {jax.default_backend()} backend gives no memory analysis")
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)


def auto_client_chunk(
    algorithm: Algorithm,
    model: Model,
    data: FederatedData,
    clients_per_round: int,
    memory_bytes: float,
) -> int | None:
    """The most clients whose local training fits in ``memory_bytes`` at once (for
    ``simulate(client_chunk=...)``), from :func:`client_memory_bytes` at widths 1 and 8
    extrapolated linearly; ``None`` when all ``clients_per_round`` fit."""
    if not memory_bytes > 0:
        raise ValueError(f"memory_bytes must be > 0, got {memory_bytes}")
    one, eight = (client_memory_bytes(algorithm, model, data, w) for w in (1, 8))
    per_client = max((eight - one) / 7.0, 1.0)
    base = max(one - per_client, 0.0)
    chunk = int((memory_bytes - base) // per_client)
    if chunk < 1:
        raise ValueError(
            f"memory_bytes={memory_bytes:.3g} holds no client: one needs about {one:.3g} bytes"
        )
    return None if chunk >= clients_per_round else chunk
