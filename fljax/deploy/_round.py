"""The server's half of a deployed round: the simulation's own stage list split where the
sites' work happens. ``before`` (round keys, broadcast, selection, work budget, the cohort's
per-site keys) runs on the server, the sites run local training and the client chain, and
``after`` (weights, fault isolation, reduction, server optimizer, algorithm finalize, reported
loss, round counter) runs on the server again on the messages that came back."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fljax.client import ClientOutput
from fljax.data import ClientData
from fljax.engine._context import RoundCtx
from fljax.engine._train import fold_ids

BEFORE = ("round_keys", "broadcast", "select_uniform", "select_poisson", "gather_data",
          "work_budget", "drop_unreachable", "gather_client_inputs")  # fmt: skip
ON_SITES = ("local_training", "client_chain", "scatter_clients")
AFTER = ("aggregation_weights", "reject_updates", "reduce", "server_optimizer",
         "algorithm_finalize", "report_loss", "next_round")  # fmt: skip


class Cohort(NamedTuple):
    """The round as the server sends it: the cohort, its keys and what it trains from."""

    ctx: RoundCtx  # after the ``before`` stages (padded flag dropped: static, see SplitRound)
    client_keys: jax.Array  # [K] local-training keys, fold_in(keys.clients, site)
    chain_keys: jax.Array  # [K] client-chain keys, fold_in(keys.transform, site)


class SplitRound:
    """``before(state, key) -> Cohort`` and ``after(state, ctx) -> (state, RoundMetrics)``,
    compiled once, from the stage list of ``round_fn`` and every site's training count."""

    def __init__(self, round_fn, counts):
        names = [s.name for s in round_fn.stages]
        unknown = [n for n in names if n not in (*BEFORE, *ON_SITES, *AFTER)]
        if unknown:
            raise ValueError(f"a deployed round has no place for the stages {unknown} of this "
                             "configuration (simulation-only)")  # fmt: skip
        cut = names.index("gather_client_inputs")
        self.before_stages = list(round_fn.stages[: cut + 1])
        self.after_stages = [s for s in round_fn.stages[cut + 1 :] if s.name in AFTER]
        self.counts = jnp.asarray(counts, jnp.int32)
        self.padded = False
        self.before = jax.jit(self._before)
        self.after = jax.jit(self._after)
        self.after_secure = jax.jit(self._after_secure)

    def _before(self, state, key) -> Cohort:
        ctx = RoundCtx(key=key)
        for stage in self.before_stages:
            if stage.name == "gather_data":  # the server holds counts, not data
                ctx = ctx._replace(batch=ClientData(None, None, self.counts[ctx.ids]))
            elif stage.name == "gather_client_inputs":
                keys = ctx.keys
                cohort = Cohort(ctx, fold_ids(keys.clients, ctx.ids),
                                fold_ids(keys.transform, ctx.ids))  # fmt: skip
            else:
                state, ctx = stage.apply(state, ctx)
        self.padded = bool(ctx.padded)  # static: Poisson selection pads the cohort
        return cohort._replace(ctx=ctx._replace(padded=False))

    def _after(self, state, ctx: RoundCtx):
        ctx = ctx._replace(padded=self.padded)
        for stage in self.after_stages:
            state, ctx = stage.apply(state, ctx)
        return state, ctx.metrics()

    def _after_secure(self, state, ctx: RoundCtx):
        """The stages after a secure reduction (``ctx.aggregate`` given by SecAgg+)."""
        ctx = ctx._replace(padded=self.padded)
        for stage in self.after_stages:
            if stage.name not in ("reject_updates", "reduce"):
                state, ctx = stage.apply(state, ctx)
        return state, ctx.metrics()


def received(ctx: RoundCtx, replied, messages, uploads, train_loss, num_steps) -> RoundCtx:
    """``ctx`` with the cohort's replies ``[K, ...]``: those that did not reply (lost sites,
    invalid slots) do not contribute, as stragglers dropped under ``"drop"``."""
    out = ClientOutput(None, (), uploads, jnp.asarray(train_loss, jnp.float32),
                       jnp.asarray(num_steps, jnp.int32))  # fmt: skip
    return ctx._replace(out=out, deltas=messages,
                        contributed=ctx.contributed & jnp.asarray(replied))  # fmt: skip


def stack_replies(like: Any, trees: list) -> Any:
    """The cohort's trees stacked ``[K, ...]``; ``None`` (no reply) is zeros."""
    zeros = jax.tree.map(jnp.zeros_like, like)
    filled = [zeros if t is None else t for t in trees]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *filled)
