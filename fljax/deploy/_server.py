"""The server side: a Flower ``ServerApp`` that waits for every site, learns the federation's
shape at a handshake (counts and shapes, no data), then runs the simulation's server stages
around the sites' work (:mod:`fljax.deploy._round`), evaluates on every site's test split
(only metrics come back) and writes the run folder as ``fljax-run`` does."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import jax
import numpy as np

from fljax.deploy._client import FEDERATION, TRAIN, infos_from_json, infos_to_json
from fljax.deploy._record import RunRecord
from fljax.deploy._round import SplitRound, received, stack_replies
from fljax.deploy._spec import (
    Deployment,
    SiteInfo,
    federation,
    initial_site_states,
    local_update,
    prepare,
)
from fljax.deploy._wire import from_record, key_to_list, to_record, tree_bytes
from fljax.engine._round import initial_state
from fljax.engine._state import NonFiniteUpdateError


def wait_for_sites(grid, num_sites: int, timeout: float) -> list[int]:
    """The node ids once ``num_sites`` SuperNodes are connected (refused after ``timeout``)."""
    t0 = time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= num_sites:
            return nodes
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{len(nodes)} of num_sites={num_sites} SuperNodes connected "
                               f"within connect_timeout={timeout:g} s")  # fmt: skip
        time.sleep(0.5)


def handshake(grid, nodes: list[int], timeout: float) -> dict[int, tuple[int, SiteInfo]]:
    """Asks every node which site it serves: ``{site: (node id, SiteInfo)}``; refuses
    duplicated or missing site indices, naming them."""
    from flwr.app import Message, MessageType, RecordDict

    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    sites: dict[int, tuple[int, SiteInfo]] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise RuntimeError(f"node {node} failed the handshake: {reply.error.reason}")
        (info,) = infos_from_json(reply.content.config_records["site"]["info"])
        if info.site in sites:
            raise ValueError(f"node config site={info.site} is served by two nodes "
                             f"({sites[info.site][0]} and {node}); give each its own index")
        sites[info.site] = (node, info)
    missing = sorted(set(range(len(nodes))) - set(sites))
    if missing or len(sites) != len(nodes):
        raise ValueError(f"sites must be numbered 0..{len(nodes) - 1} (node config site=...); "
                         f"got {sorted(sites)}, missing {missing}")  # fmt: skip
    return sites


class Server:
    """One deployed run on ``grid``: handshake, rounds, evaluation, run folder."""

    def __init__(self, dep: Deployment, grid, context=None):
        self.dep, self.grid, self.context = dep, grid, context
        nodes = wait_for_sites(grid, dep.num_sites, dep.connect_timeout)
        self.sites = handshake(grid, nodes, dep.round_timeout)
        self.infos = [self.sites[s][1] for s in range(len(self.sites))]
        self.fed_json = infos_to_json(self.infos)
        self.fed = federation(dep.task, self.infos)
        self.prep = prepare(dep, self.fed)
        prep, c = self.prep, self.fed.num_clients
        self.state = initial_state(prep.round_fn, prep.algorithm, prep.params, c, prep.root)
        self.k_rounds = jax.random.split(prep.root)[1]
        self.split = SplitRound(prep.round_fn, self.fed.num_examples)
        self.upload_like = self._upload_like()
        self.record = RunRecord(dep, self.fed, prep, self.state)
        self.lost: set[int] = set()
        self.on_round = None  # (server, rounds done) -> None, after each round (tests, hooks)

    def _upload_like(self):
        """Zeros shaped as a site's upload (SCAFFOLD's control-variate delta), from the local
        update's abstract evaluation on the padded shapes (the server holds no data)."""
        prep = self.prep
        update, spec = local_update(self.dep, prep, self.fed)
        client0, _, server0 = initial_site_states(prep.algorithm, prep.params)
        x, y = (jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in (spec.x, spec.y))
        n = jax.ShapeDtypeStruct((), np.int32)
        out = jax.eval_shape(update, prep.params, x, y, n, prep.root, client0, server0, n)
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), out.upload)

    def _config(self, extra: dict) -> dict:
        return {FEDERATION: self.fed_json, "json": json.dumps(extra)}

    def _live(self, site: int) -> bool:
        node = self.sites[site][0]
        return site not in self.lost or node in set(self.grid.get_node_ids())

    def reachable(self, r: int, cohort):
        """``(slot, site)`` of the cohort's valid slots whose site is reachable; a lost site
        gone from the SuperLink is dropped from round ``r`` at once."""
        ids, valid = np.asarray(cohort.ctx.ids), np.asarray(cohort.ctx.valid)
        for slot, site in enumerate(ids.tolist()):
            if not valid[slot]:
                continue
            if not self._live(site):
                self.record.drop(r, site)
                continue
            yield slot, site

    def train_messages(self, r: int, cohort, evaluate: bool = False):
        """One message per valid, reachable slot of the cohort: ``{slot: Message}``; with
        ``evaluate`` each site first scores the model it receives (the global model after
        the previous round: the evaluation rides along, saving a round trip)."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        budget = np.asarray(cohort.ctx.budget)
        start = to_record(cohort.ctx.start)
        server_state = to_record(self.state.algorithm_state)
        msgs = {}
        for slot, site in self.reachable(r, cohort):
            cfg = self._config({"round": r, "budget": int(budget[slot]), "evaluate": evaluate,
                                "client_key": key_to_list(cohort.client_keys[slot]),
                                "transform_key": key_to_list(cohort.chain_keys[slot])})
            content = RecordDict({TRAIN: ConfigRecord(cfg), "start": start,
                                  "server_state": server_state})  # fmt: skip
            msgs[slot] = Message(content, dst_node_id=self.sites[site][0],
                                 message_type=MessageType.TRAIN, group_id=str(r))  # fmt: skip
        self.record.down += (tree_bytes(start) + tree_bytes(server_state)) * len(msgs)
        return msgs

    def collect(self, r: int, cohort, msgs: dict, evals: dict):
        """The cohort's replies as ``RoundCtx`` fields and the sites' scores (``evals``:
        ``{site: evaluation Message}`` for the sites outside the cohort); sites that failed
        or timed out are dropped from this round and named in the history."""
        ids = np.asarray(cohort.ctx.ids).tolist()
        by_node = {self.sites[ids[s]][0]: s for s in msgs}
        node_site = {self.sites[site][0]: site for site in (*evals, *(ids[s] for s in msgs))}
        replies = self.grid.send_and_receive([*msgs.values(), *evals.values()],
                                             timeout=self.dep.round_timeout)  # fmt: skip
        k = len(ids)
        message, upload = [None] * k, [None] * k
        loss, steps, ok = np.zeros(k, np.float32), np.zeros(k, np.int32), np.zeros(k, bool)
        scores = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in node_site or reply.has_error():
                continue
            c = reply.content
            if "metrics" in c.metric_records:
                scores[node_site[node]] = dict(c.metric_records["metrics"])
            slot = by_node.get(node)
            if slot is None:
                continue
            message[slot] = from_record(c.array_records["message"], self.prep.params)
            upload[slot] = from_record(c.array_records["upload"], self.upload_like)
            self.record.up += tree_bytes(c.array_records["message"]) + tree_bytes(
                c.array_records["upload"])  # fmt: skip
            stats = c.metric_records["stats"]
            loss[slot], steps[slot], ok[slot] = stats["train_loss"], stats["num_steps"], True
        for slot in msgs:
            if not ok[slot]:
                self.lost.add(ids[slot])
                self.record.drop(r, ids[slot])
        messages = stack_replies(self.prep.params, message)
        uploads = stack_replies(self.upload_like, upload)
        return received(cohort.ctx, ok, messages, uploads, loss, steps), scores

    def eval_messages(self, label: str, sites) -> dict:
        """``{site: Message}`` asking each reachable site of ``sites`` to score the global
        model on its test split (only metrics come back)."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        params = to_record(self.state.params)
        return {s: Message(RecordDict({TRAIN: ConfigRecord(self._config({})), "params": params}),
                           dst_node_id=self.sites[s][0], message_type=MessageType.EVALUATE,
                           group_id=label)
                for s in sites if self._live(s)}  # fmt: skip

    def evaluate(self, round_idx: int) -> dict:
        """Every reachable site's test metrics of the global model ``{site: {name: value}}``
        (a lost site's are undefined)."""
        msgs = self.eval_messages(f"eval-{round_idx}", range(len(self.infos)))
        node_site = {self.sites[s][0]: s for s in msgs}
        scores = {}
        for reply in self.grid.send_and_receive(list(msgs.values()),
                                                timeout=self.dep.round_timeout):  # fmt: skip
            if not reply.has_error():
                scores[node_site[reply.metadata.src_node_id]] = dict(
                    reply.content.metric_records["metrics"])
        return scores

    def secure_round(self, r: int, cohort):
        from fljax.deploy._secagg import secure_mean

        return secure_mean(self, r, cohort)

    def step(self, r: int, evaluate: bool) -> dict | None:
        """Round ``r``: the server's stages, the sites' work, the server's stages again;
        with ``evaluate`` the sites' scores of the model they started from."""
        cohort = self.split.before(self.state, jax.random.fold_in(self.k_rounds, r))
        scores = None
        if self.dep.secagg is not None:
            ctx = self.secure_round(r, cohort)
            self.state, metrics = self.split.after_secure(self.state, ctx)
        else:
            msgs = self.train_messages(r, cohort, evaluate)
            trained = {int(np.asarray(cohort.ctx.ids)[slot]) for slot in msgs}
            others = [s for s in range(len(self.infos)) if s not in trained]
            evals = self.eval_messages(f"eval-{r}", others) if evaluate else {}
            ctx, scores = self.collect(r, cohort, msgs, evals)
            self.state, metrics = self.split.after(self.state, ctx)
        if not bool(metrics.finite):
            raise NonFiniteUpdateError(f"round {r + 1}: the aggregated update is not finite")
        self.record.absorb(metrics)
        return scores

    def run(self) -> None:
        """Every round, with the evaluation of round 0 and of each ``eval_every``-th round
        riding along with the next round's messages (secure rounds: its own round trip), and
        the last round's evaluated at the end."""
        rounds, every = self.dep.rounds, self.dep.eval_every
        with self.record.folder():
            self.record.snapshot(0, self.state)
            pending = True
            for r in range(rounds):
                t0 = time.perf_counter()
                if pending and self.dep.secagg is not None:
                    self.record.complete(self.evaluate(r))
                    pending = False
                scores = self.step(r, pending)
                if pending:
                    self.record.complete(scores)
                print(f"round {r + 1}/{rounds}: {time.perf_counter() - t0:.1f} s", flush=True)
                if self.on_round is not None:
                    self.on_round(self, r + 1)
                pending = (r + 1) % every == 0 or r + 1 == rounds
                if pending:
                    self.record.snapshot(r + 1, self.state)
            self.record.complete(self.evaluate(rounds))
            self.record.finish(self.state)


def server_app(deployment: Deployment | Callable[[object], Deployment]):
    """A Flower ``ServerApp`` running ``deployment`` (or ``deployment(context)``, for apps
    configured by the run config) on the SuperLink's connected sites."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        dep = deployment if isinstance(deployment, Deployment) else deployment(context)
        Server(dep, grid, context).run()

    return app
