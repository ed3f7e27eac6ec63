"""Secure aggregation through Flower's own SecAgg+ workflow (``SecAggPlusWorkflow`` on the
server, ``secaggplus_mod`` on the sites): key agreement, Shamir-shared mask seeds, masked
quantized messages and dropout recovery are Flower's; fljax supplies each site's message
(its update after the client chain) and its aggregation weight, and takes the unmasked
weighted mean as the round's aggregate."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fljax.deploy._round import received
from fljax.deploy._wire import key_to_list
from fljax.engine._setup import tree_bytes

SECAGG_CONFIG = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants


def secagg_mod(msg, ctxt, call_next):
    """The site's mod: Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round, the
    handler directly for the others (plain rounds, the handshake, evaluation)."""
    from flwr.client.mod import secaggplus_mod

    if SECAGG_CONFIG in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def secagg_request(content) -> tuple[dict, object, None]:
    """The training request inside a SecAgg+ round: ``(config, start params record, None)``."""
    return dict(content.config_records["fitins.config"]), content.array_records[
        "fitins.parameters"], None  # fmt: skip


def secagg_reply(message, stats: dict, weight: int):
    """The site's reply in the legacy ``FitRes`` form SecAgg+ masks: its message's leaves and
    its weight as ``num_examples``."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    leaves = [np.asarray(x, np.float32) for x in jax.tree.leaves(jax.device_get(message))]
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(leaves), int(weight),
                 {"train_loss": stats["train_loss"], "num_steps": stats["num_steps"]})  # fmt: skip
    return fitres_to_recorddict(res, keep_input=True)


def _strategy(fits: dict, grid):
    """A legacy ``Strategy`` handing SecAgg+ this round's per-site instructions and keeping
    what it aggregated."""
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import Strategy

    class Cohort(Strategy):
        results: list = []
        aggregate = None

        def initialize_parameters(self, client_manager):
            return None

        def configure_fit(self, server_round, parameters, client_manager):
            run_id = grid.run.run_id
            return [(GridClientProxy(nid, grid, run_id), ins) for nid, ins in fits.items()]

        def aggregate_fit(self, server_round, results, failures):
            self.results = results
            self.aggregate = results[0][1].parameters if results else None
            return self.aggregate, {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return Cohort()


def site_weights(server) -> list[int]:
    """Each site's aggregation weight: its example count (``"num_examples"`` weighting), or 1."""
    if server.prep.algorithm.weighting != "num_examples":
        return [1] * len(server.infos)
    return [int(i.n_train) for i in server.infos]


def _fit_instructions(server, r: int, cohort) -> tuple[dict, dict]:
    """``{node: FitIns}`` and ``{node: slot}`` for the cohort's reachable sites."""
    from flwr.common import FitIns, ndarrays_to_parameters

    budget, weights = np.asarray(cohort.ctx.budget), site_weights(server)
    start = ndarrays_to_parameters([np.asarray(x) for x in jax.tree.leaves(cohort.ctx.start)])
    fits, slots = {}, {}
    for slot, site in server.reachable(r, cohort):
        extra = {"round": r, "budget": int(budget[slot]), "weight": weights[site],
                 "client_key": key_to_list(cohort.client_keys[slot]),
                 "transform_key": key_to_list(cohort.chain_keys[slot])}  # fmt: skip
        node = server.sites[site][0]
        fits[node] = FitIns(start, server._config(extra))
        slots[node] = slot
    return fits, slots


def secure_mean(server, r: int, cohort):
    """Round ``r``'s aggregate by Flower's SecAgg+ over the cohort; ``RoundCtx`` with it (the
    sites that dropped out during the protocol do not contribute)."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.common import parameters_to_ndarrays
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow

    s = server.dep.secagg
    fits, slots = _fit_instructions(server, r, cohort)
    max_weight = float(max(site_weights(server))) if s.max_weight is None else s.max_weight
    strategy = _strategy(fits, server.grid)
    legacy = LegacyContext(server.context, strategy=strategy)
    legacy.state.config_records["config"] = ConfigRecord({"current_round": r + 1})
    legacy.state.array_records["parameters"] = ArrayRecord(
        [np.asarray(x) for x in jax.tree.leaves(cohort.ctx.start)])  # fmt: skip
    SecAggPlusWorkflow(s.num_shares, s.reconstruction_threshold, max_weight=max_weight,
                       clipping_range=s.clipping_range, quantization_range=s.quantization_range,
                       modulus_range=s.modulus_range, timeout=s.timeout)(server.grid, legacy)
    if strategy.aggregate is None:
        raise RuntimeError(f"round {r + 1}: Flower's SecAgg+ halted (too few sites completed "
                           "the protocol for its reconstruction threshold); see the log")
    mean = parameters_to_ndarrays(strategy.aggregate)
    aggregate = jax.tree.unflatten(jax.tree.structure(server.prep.params),
                                   [jnp.asarray(x) for x in mean])  # fmt: skip
    k = np.asarray(cohort.ctx.ids).shape[0]
    loss, steps, ok = np.zeros(k, np.float32), np.zeros(k, np.int32), np.zeros(k, bool)
    for proxy, res in strategy.results:
        slot = slots[proxy.node_id]
        loss[slot], steps[slot] = res.metrics["train_loss"], res.metrics["num_steps"]
        ok[slot] = True
    ids = np.asarray(cohort.ctx.ids)
    for slot in slots.values():
        if not ok[slot]:
            server.lost.add(int(ids[slot]))
            server.record.drop(r, int(ids[slot]))
    _count_bytes(server, fits, ok, mean, s)
    ctx = received(cohort.ctx, ok, None, (), loss, steps)
    return ctx._replace(aggregate=aggregate)


def _count_bytes(server, fits: dict, ok, mean: list, s) -> None:
    """Down: the start model per site; up: each surviving site's masked vector (one
    ``log2(modulus_range)``-bit word per coordinate) besides the protocol's keys and shares."""
    coords = sum(int(np.size(x)) for x in mean) + 1  # the weight travels masked too
    server.record.down += tree_bytes(server.prep.params) * len(fits)
    server.record.up += int(ok.sum()) * coords * math.ceil(math.log2(s.modulus_range) / 8)
