"""Selection: which clients take part in a round (``ctx.ids``, ``ctx.valid``).

Uniform without replacement; Poisson (every client independently, a padded cohort); and,
with a system model, availability on the simulated clock followed by a selection rule
(uniform, available, fastest, feasible, Oort, Power-of-Choice, Poisson among all).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fljax.data import gather_clients
from fljax.engine._context import RoundCtx, Stage, SyncKeys
from fljax.privacy import binomial_cap


def select_uniform(key: jax.Array, num_clients: int, clients_per_round: int) -> jax.Array:
    """``K`` distinct client ids, uniformly without replacement."""
    return jax.random.choice(key, num_clients, (clients_per_round,), replace=False).astype(
        jnp.int32
    )


def poisson_cap(num_clients: int, expected: int) -> int:
    """The padded width of a Poisson cohort of ``expected`` clients: exceeded (and then
    truncated to a random subset) with probability below 1e-9 per round."""
    rate = expected / num_clients
    return int(max(expected, binomial_cap(num_clients, num_clients, rate, lambda t: t <= 1e-9)))


def cohort_width(num_clients: int, k: int, dp_plan, system) -> int:
    """The ``vmap``ped cohort: ``K``, or a Poisson cohort's padded cap (client-level DP's,
    or the system model's Poisson selection)."""
    if dp_plan is not None and dp_plan.poisson_clients:
        return dp_plan.cohort
    if system is not None and system.selection == "poisson":
        return poisson_cap(num_clients, k)
    return k


def select_poisson(
    key: jax.Array, num_clients: int, rate: float, cap: int
) -> tuple[jax.Array, jax.Array]:
    """Poisson sampling: every client joins independently with probability ``rate``.

    Returns ``ids[cap]`` and ``valid[cap]``: the sampled clients in random order, truncated to
    ``cap`` (a uniformly random subset when more were sampled), padded with unsampled ids
    marked invalid. The padded cohort keeps one static shape for ``vmap``.
    """
    u = jax.random.uniform(key, (num_clients,))
    sampled = u < rate
    order = jnp.argsort(jnp.where(sampled, u, 2.0 + u))[:cap].astype(jnp.int32)
    return order, sampled[order]


def uniform_selection(num_clients: int, k: int) -> Stage:
    """``K`` clients uniformly without replacement, all valid."""

    def apply(state, ctx: RoundCtx):
        ids = select_uniform(ctx.keys.select, num_clients, k)
        return state, ctx._replace(ids=ids, valid=jnp.ones(ids.shape, bool))

    return Stage("select_uniform", apply)


def subset_selection(num_clients: int, k: int) -> Stage:
    """``K`` clients uniformly without replacement among the run's included sites
    (``ctx.subset``): the first ``K`` included sites of the permutation that
    :func:`select_uniform` takes its first ``K`` from, so an all-sites mask selects exactly
    what :func:`uniform_selection` does. With ``K = C`` every site is in the cohort and the
    excluded ones are invalid (they never train, send or count)."""

    def apply(state, ctx: RoundCtx):
        perm = select_uniform(ctx.keys.select, num_clients, num_clients)
        rank = jnp.arange(num_clients)
        order = jnp.argsort(jnp.where(ctx.subset[perm], rank, num_clients + rank))
        ids = perm[order[:k]]
        return state, ctx._replace(ids=ids, valid=ctx.subset[ids], padded=True)

    return Stage("select_subset", apply)


def poisson_selection(num_clients: int, rate: float, cap: int, availability=None) -> Stage:
    """Poisson sampling at ``rate`` into a padded cohort of width ``cap``; with an
    ``availability`` function, the sampled clients that are unreachable drop out."""

    def apply(state, ctx: RoundCtx):
        ids, valid = select_poisson(ctx.keys.select, num_clients, rate, cap)
        if availability is not None:
            valid = valid & availability(state, ctx)[ids]
        return state, ctx._replace(ids=ids, valid=valid, padded=True)

    return Stage("select_poisson", apply)


def availability_fn(system, num_clients: int):
    """``(state, ctx) -> [C] bool``: who is reachable this round (diurnal cycle on the clock)."""
    prof = system.profiles

    def available(state, ctx: RoundCtx):
        p_avail = jnp.asarray(prof.availability)
        if system.diurnal > 0:  # daily cycle on the simulated clock, shifted per client
            day = state.system_state.now / 86_400.0 + jnp.asarray(prof.phase)
            p_avail = jnp.clip(p_avail * (1 + system.diurnal * jnp.cos(2 * jnp.pi * day)), 0, 1)
        return jax.random.uniform(ctx.keys.availability, (num_clients,)) < p_avail

    return available


def system_selection(system, model, task_loss, k: int, spec, t_all, t_pref) -> Stage:
    """Availability, then the system model's selection rule (``system.selection``).

    Args:
        system: the :class:`fljax.system.SystemModel`.
        model: scores candidates for Power-of-Choice; ``task_loss`` its batch loss.
        k: cohort size; ``spec``: the training split (sizes); ``t_all``: ``[C]`` time of a
            full round of work per client; ``t_pref``: Oort's preferred round duration.
    """
    num_clients = spec.num_examples.shape[0]
    available = availability_fn(system, num_clients)
    log_n = jnp.log(jnp.maximum(jnp.asarray(np.asarray(spec.num_examples), jnp.float32), 1e-6))
    rule = system.selection

    def oort_score(u, avail, sys_state, round_idx):  # Lai et al. (2021)
        seen = sys_state.last > 0
        r = (round_idx + 1).astype(jnp.float32)
        bonus = jnp.sqrt(0.1 * jnp.log(r) / jnp.maximum(sys_state.last, 1))
        speed_ok = jnp.where(t_all > t_pref, (t_pref / t_all) ** 2, 1.0)
        exploit = (sys_state.utility + bonus) * speed_ok
        n_explore = int(round(system.exploration * k))
        fresh = avail & ~seen
        explore_rank = jnp.argsort(jnp.argsort(jnp.where(fresh, u, 2.0 + u)))
        explore = fresh & (explore_rank < n_explore)
        return -jnp.where(
            explore, 1e30, jnp.where(avail & seen, exploit, jnp.where(avail, -1.0 + u, -2.0))
        )

    def power_of_choice(u, avail, params, train):
        # Cho et al. (2022): d candidates drawn w.p. ~ n_k without replacement (Gumbel
        # top-d), then the K with the highest global-model loss.
        gumbel = -jnp.log(-jnp.log(jnp.clip(u, 1e-12, 1.0 - 1e-7)))
        cand = jnp.argsort(-jnp.where(avail, log_n + gumbel, -jnp.inf))[: system.candidates]
        batch = gather_clients(train, cand)

        def loss(x, y, n):
            mask = jnp.arange(x.shape[0]) < n
            return task_loss(model.apply(params, x, train=False), y, mask)

        losses = jax.vmap(loss)(batch.x, batch.y, batch.num_examples)
        losses = jnp.where(avail[cand], losses, -jnp.inf)
        return cand[jnp.argsort(-losses)[:k]].astype(jnp.int32)

    def apply(state, ctx: RoundCtx):
        keys: SyncKeys = ctx.keys
        avail = available(state, ctx)
        u = jax.random.uniform(keys.select, (num_clients,))
        if rule == "uniform":
            ids = select_uniform(keys.select, num_clients, k)
        elif rule == "power_of_choice":
            ids = power_of_choice(u, avail, ctx.start, ctx.train)
        else:
            if rule == "available":  # K uniformly among the available clients
                score = jnp.where(avail, u, 2.0 + u)
            elif rule == "fastest":  # the K available clients with the shortest round time
                score = jnp.where(avail, t_all, jnp.inf)
            elif rule == "feasible":  # K uniformly among available clients meeting the deadline
                score = jnp.where(avail & (t_all <= system.deadline), u, 2.0 + u)
            else:
                score = oort_score(u, avail, state.system_state, state.round)
            ids = jnp.argsort(score)[:k].astype(jnp.int32)
        valid = avail[ids]
        if rule == "feasible":
            valid = valid & (t_all[ids] <= system.deadline)
        return state, ctx._replace(ids=ids, valid=valid, padded=True)

    return Stage(f"select_{rule}", apply)


def cyclic_order(num_clients: int, k: int, shuffle: bool) -> Stage:
    """Round ``r`` visits cycle positions ``rK, ..., rK + K - 1``; position ``p`` is client
    ``p mod C``, or with shuffled cycles entry ``p mod C`` of a fresh permutation for cycle
    ``p // C`` (from the order key kept in ``state.algorithm_state``)."""

    def apply(state, ctx: RoundCtx):
        pos = state.round * k + jnp.arange(k)
        ids = (pos % num_clients).astype(jnp.int32)
        if shuffle:
            perms = jax.vmap(
                lambda c: jax.random.permutation(
                    jax.random.fold_in(state.algorithm_state, c), num_clients
                )
            )(pos // num_clients)
            ids = jnp.take_along_axis(perms, ids[:, None], axis=1)[:, 0].astype(jnp.int32)
        return state, ctx._replace(ids=ids, valid=jnp.ones(ids.shape, bool))

    return Stage("select_cyclic", apply)
