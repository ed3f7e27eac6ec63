"""The site side: a Flower ``ClientApp`` that runs the simulation's compiled client update for
ONE site on the data its node reads itself, then the client chain (the algorithm's transform,
local DP, compression with its residual), keeping the site's state (SCAFFOLD's control
variate, error-feedback residuals, personal layers) in the node's ``Context.state`` across
rounds. Only messages leave the site: its update, its upload, counts and metrics."""

from __future__ import annotations

import json
from collections.abc import Callable

import jax
import numpy as np

from fljax.client import evaluate_fn
from fljax.deploy._sites import SiteData, load_site
from fljax.deploy._spec import (
    Deployment,
    Prepared,
    SiteInfo,
    federation,
    initial_site_states,
    prepare,
    site_update,
)
from fljax.deploy._wire import from_record, key_from_list, to_record

FEDERATION = "fljax.federation"  # ConfigRecord key: the JSON of every site's SiteInfo
TRAIN = "fljax.train"  # ConfigRecord: round, keys, budget
STATE_CLIENT, STATE_CHAIN = "fljax.client_state", "fljax.chain_state"  # node Context.state


def infos_to_json(infos: list[SiteInfo]) -> str:
    return json.dumps([i._asdict() for i in infos])


def infos_from_json(text: str) -> list[SiteInfo]:
    return [SiteInfo(**{**d, "x_shape": tuple(d["x_shape"]), "y_shape": tuple(d["y_shape"])})
            for d in json.loads(text)]  # fmt: skip


def site_info(data: SiteData) -> SiteInfo:
    """What the server learns of a site at the handshake (no data)."""
    x_shape, y_shape = np.shape(data.x_train)[1:], np.shape(data.y_train)[1:]
    return SiteInfo(data.site, data.name, len(data.x_train), len(data.x_test),
                    tuple(x_shape), tuple(y_shape))  # fmt: skip


class Site:
    """One site's prepared pieces for a federation (built once per process and federation)."""

    def __init__(self, dep: Deployment, data: SiteData, infos: list[SiteInfo]):
        self.dep, self.data = dep, data
        self.fed = federation(dep.task, infos, data.site, data.arrays)
        self.prep: Prepared = prepare(dep, self.fed)
        self.update, self.xyn = site_update(dep, self.prep, self.fed)
        algorithm, params = self.prep.algorithm, self.prep.params
        transform = algorithm.client_transform
        self.chain = jax.jit(lambda d, s, k, p: transform.update(d, s, p, key=k))
        self.client0, self.chain0, self.server_state0 = initial_site_states(algorithm, params)
        self.score = jax.jit(evaluate_fn(dep.model, self.fed.task, False, self.fed.metrics,
                                         self.fed.loss_options))  # fmt: skip

    def stored(self, context, key: str, like):
        """The site's persistent state ``key`` from the node, or its initial value."""
        if key in context.state.array_records:
            return from_record(context.state.array_records[key], like)
        return like

    def train(self, context, start, server_state, cfg: dict):
        """One round of local work: the client update, then the client chain. Returns the
        message, the upload and the output's statistics; the site's states are kept."""
        client_state = self.stored(context, STATE_CLIENT, self.client0)
        chain_state = self.stored(context, STATE_CHAIN, self.chain0)
        x, y, n = self.xyn
        out = self.update(start, x, y, n, key_from_list(cfg["client_key"]), client_state,
                          server_state, np.int32(cfg["budget"]))  # fmt: skip
        message, chain_state = self.chain(out.delta, chain_state,
                                          key_from_list(cfg["transform_key"]), start)  # fmt: skip
        context.state.array_records[STATE_CLIENT] = to_record(out.client_state)
        context.state.array_records[STATE_CHAIN] = to_record(chain_state)
        stats = {"train_loss": float(out.train_loss), "num_steps": int(out.num_steps),
                 "num_examples": int(n)}  # fmt: skip
        return message, out.upload, stats

    def evaluate(self, context, params) -> dict:
        """The site's test metrics of the global model (its personalized model for a
        personalized algorithm), and its test count."""
        personal = self.prep.algorithm.personal
        if personal is not None:
            params = personal.model(params, self.stored(context, STATE_CLIENT, self.client0))
        test = self.fed.test
        x, y = test.x[:1], test.y[:1]
        n = np.asarray(test.num_examples)[self.data.site : self.data.site + 1]
        scores = jax.device_get(self.score(params, x, y, n))
        out = {name: float(np.asarray(v)[0]) for name, v in scores.items()}
        return {**out, "num_test_examples": int(n[0])}


def _site_for(cache: dict, dep: Deployment, context, federation_json: str) -> Site:
    data = load_site(dict(context.node_config))
    key = (id(dep), federation_json, data.site)
    if key not in cache:
        cache.clear()
        cache[key] = Site(dep, data, infos_from_json(federation_json))
    return cache[key]


def client_app(deployment: Deployment | Callable[[object], Deployment]):
    """A Flower ``ClientApp`` serving one site of ``deployment`` (or of
    ``deployment(context)``, for apps configured by the run config)."""
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from fljax.deploy._secagg import secagg_mod, secagg_reply, secagg_request

    app = ClientApp(mods=[secagg_mod])
    cache: dict = {}

    def dep_of(context) -> Deployment:
        return deployment if isinstance(deployment, Deployment) else deployment(context)

    @app.query()
    def query(msg, context):
        info = site_info(load_site(dict(context.node_config)))
        return Message(RecordDict({"site": ConfigRecord({"info": infos_to_json([info])})}),
                       reply_to=msg)  # fmt: skip

    @app.train()
    def train(msg, context):
        content = msg.content
        secure = "fitins.config" in content.config_records
        cfg, start_rec, state_rec = secagg_request(content) if secure else (
            dict(content.config_records[TRAIN]), content.array_records["start"],
            content.array_records["server_state"])  # fmt: skip
        site = _site_for(cache, dep_of(context), context, cfg[FEDERATION])
        cfg = {**cfg, **json.loads(cfg["json"])}
        start = from_record(start_rec, site.prep.params)
        server_state = site.server_state0 if state_rec is None else from_record(
            state_rec, site.server_state0)  # fmt: skip
        scores = site.evaluate(context, start) if cfg.get("evaluate") else None
        message, upload, stats = site.train(context, start, server_state, cfg)
        if secure:
            return Message(secagg_reply(message, stats, cfg["weight"]), reply_to=msg)
        reply = RecordDict({"message": to_record(message), "upload": to_record(upload),
                            "stats": MetricRecord(stats)})  # fmt: skip
        if scores is not None:
            reply["metrics"] = MetricRecord(scores)
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg, context):
        cfg = msg.content.config_records[TRAIN]
        site = _site_for(cache, dep_of(context), context, cfg[FEDERATION])
        params = from_record(msg.content.array_records["params"], site.prep.params)
        return Message(RecordDict({"metrics": MetricRecord(site.evaluate(context, params))}),
                       reply_to=msg)  # fmt: skip

    return app
