"""Local work and the simulated clock: per-client step budgets (per-client step counts,
stragglers), deadlines (drop late clients or cut their work) and the round's duration, and
the clock / Oort statistics carried in :class:`ClockState`."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fljax.client import num_local_steps
from fljax.data import ClientData
from fljax.engine._context import RoundCtx, Stage
from fljax.engine._state import ClockState
from fljax.system import client_times, steps_within

STRAGGLER_POLICIES = ("drop", "partial")


class Stragglers(NamedTuple):
    """Each round, ``count`` of the selected clients are stragglers (static)."""

    count: int
    policy: str  # "drop": not aggregated; "partial": aggregated after fewer local epochs


def full_work_times(system, spec: ClientData, plan, wire_bytes) -> np.ndarray:
    """``[C]`` simulated seconds each client needs for a full round of local work."""
    up_bytes, down_bytes = wire_bytes
    n = np.asarray(spec.num_examples)
    per_step = n if plan.full_batch else np.minimum(n, plan.batch_size)
    steps = np.asarray(num_local_steps(jnp.asarray(n), plan))
    p = system.profiles
    return (
        down_bytes / np.asarray(p.downlink, np.float64)
        + steps * per_step / np.asarray(p.speed, np.float64)
        + up_bytes / np.asarray(p.uplink, np.float64)
    )


def work_budget(plan, steps_per_client, stragglers: Stragglers | None) -> Stage:
    """``ctx.budget``: the local steps each selected client may take (its own step count, or
    a straggler's partial work) and ``ctx.contributed`` (dropped stragglers excluded)."""
    per_client = None if steps_per_client is None else jnp.asarray(steps_per_client, jnp.int32)

    def apply(state, ctx: RoundCtx):
        ids = ctx.ids
        budget = jnp.full((ids.shape[0],), plan.max_steps, jnp.int32)
        if per_client is not None:
            budget = per_client[ids]
        contributed = jnp.ones(ids.shape, bool)
        if stragglers is not None and stragglers.count > 0:
            k_who, k_work = jax.random.split(ctx.keys.stragglers)
            late = (
                jnp.zeros(ids.shape, bool)
                .at[jax.random.permutation(k_who, ids.shape[0])[: stragglers.count]]
                .set(True)
            )
            if stragglers.policy == "drop":
                contributed = ~late
            else:  # partial work: uniform in [1, E - 1] epochs (or [1, T - 1] steps)
                if plan.local_epochs is not None:
                    epochs = jax.random.randint(k_work, ids.shape, 1, plan.local_epochs)
                    n = ctx.batch.num_examples
                    partial = epochs * ((n + plan.batch_size - 1) // plan.batch_size)
                else:
                    partial = jax.random.randint(k_work, ids.shape, 1, budget)
                budget = jnp.where(late, jnp.minimum(partial, budget), budget).astype(jnp.int32)
        return state, ctx._replace(budget=budget, contributed=contributed)

    return Stage("work_budget", apply)


def drop_unreachable() -> Stage:
    """Padded slots (Poisson padding, offline clients) do not contribute."""

    def apply(state, ctx: RoundCtx):
        return state, ctx._replace(contributed=ctx.contributed & ctx.valid)

    return Stage("drop_unreachable", apply)


def deadline(system, plan, wire_bytes) -> Stage:
    """The deadline policy and the round's simulated duration ``ctx.round_time``: download +
    local compute + upload per client from its profile and the exact message bytes; late
    clients are dropped (``"drop"``) or do the steps that fit (``"partial"``)."""
    prof = jax.tree.map(jnp.asarray, system.profiles)
    up_bytes, down_bytes = wire_bytes
    partial = system.deadline is not None and system.deadline_policy == "partial"

    def apply(state, ctx: RoundCtx):
        ids, budget, contributed = ctx.ids, ctx.budget, ctx.contributed
        n = ctx.batch.num_examples
        per_step = n if plan.full_batch else jnp.minimum(n, plan.batch_size)
        per_step = per_step.astype(jnp.float32)
        speed, up, down = prof.speed[ids], prof.uplink[ids], prof.downlink[ids]
        work = jnp.minimum(num_local_steps(n, plan), budget)
        if partial:
            fit = steps_within(system.deadline, per_step, speed, up, down, up_bytes, down_bytes)
            budget = jnp.minimum(budget, fit)
            work = jnp.minimum(work, fit)
            contributed = contributed & (fit > 0)
        t = client_times(work, per_step, speed, up, down, up_bytes, down_bytes)
        if system.deadline is not None and not partial:  # late updates are discarded
            contributed = contributed & (t <= system.deadline)
        round_time = jnp.max(jnp.where(ctx.valid, t, 0.0))
        if system.deadline is not None:
            round_time = jnp.minimum(round_time, system.deadline)
        return state, ctx._replace(
            budget=budget, contributed=contributed & ctx.valid, round_time=round_time
        )

    return Stage("deadline", apply)


def init_clock(params, num_clients, key) -> dict:
    """A zero :class:`ClockState` for ``num_clients`` clients."""
    del params, key
    zeros = ClockState(jnp.zeros((), jnp.float32), jnp.zeros((num_clients,), jnp.float32),
                       jnp.zeros((num_clients,), jnp.int32))  # fmt: skip
    return {"system_state": zeros}


def advance_clock() -> Stage:
    """The clock moves by the round's duration; Oort's utility ``n_i * loss_i`` and last
    round (1-based: this round is ``state.round + 1``) are updated for the clients that
    contributed. Runs before :func:`fljax.engine._server.next_round`."""

    def apply(state, ctx: RoundCtx):
        ids, contributed, sys_state = ctx.ids, ctx.contributed, state.system_state
        n = ctx.batch.num_examples.astype(jnp.float32)
        utility = jnp.where(contributed, n * ctx.out.train_loss, sys_state.utility[ids])
        clock = ClockState(
            now=sys_state.now + ctx.round_time,
            utility=sys_state.utility.at[ids].set(utility),
            last=sys_state.last.at[ids].set(
                jnp.where(contributed, state.round + 1, sys_state.last[ids])
            ),
        )
        return state._replace(system_state=clock), ctx

    return Stage("advance_clock", apply, init_clock)
