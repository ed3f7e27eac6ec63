"""A deployment in one process: the real ``ServerApp`` logic and ``ClientApp`` handlers (with
their mods: Flower's SecAgg+ included) exchanging the real Flower messages through an
in-memory grid, each site with its own node config and persistent ``Context.state``. For
rehearsing a deployment on one machine before the sites go live, and for tests."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from fljax.deploy._client import client_app
from fljax.deploy._spec import Deployment


class LocalGrid:
    """A Flower ``Grid`` whose nodes are ``ClientApp`` calls in this process (node ids
    ``1..C``); :meth:`disconnect` makes a node vanish (it stops replying and leaves the
    node list), as a killed SuperNode does."""

    def __init__(self, app, node_configs: Sequence[dict], run_id: int = 1):
        from flwr.app import Context, RecordDict
        from flwr.supercore.run import Run

        self.app = app
        self.contexts = {i + 1: Context(run_id=run_id, node_id=i + 1, node_config=dict(cfg),
                                        state=RecordDict(), run_config={})
                         for i, cfg in enumerate(node_configs)}  # fmt: skip
        self.gone: set[int] = set()
        self.run = Run.create_empty(run_id)
        self.sent = 0  # messages delivered

    def disconnect(self, node_id: int) -> None:
        self.gone.add(node_id)

    def get_node_ids(self) -> list[int]:
        return [n for n in self.contexts if n not in self.gone]

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list:
        from flwr.supercore.task_identity import TaskIdentity

        del timeout
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.gone:
                continue
            TaskIdentity.node_id = node
            try:  # a copy, as a message over the network is (mods edit what they receive)
                replies.append(self.app(copy.deepcopy(msg), self.contexts[node]))
            finally:
                TaskIdentity.node_id = 0
            self.sent += 1
        return replies


def run_local(deployment: Deployment, node_configs: Sequence[dict],
              on_round=None):  # fmt: skip
    """Runs ``deployment`` over one in-process node per config of ``node_configs`` (each
    ``{"site": i, "data-path": ...}``, as ``flower-supernode --node-config`` gives) and returns
    the :class:`fljax.deploy._server.Server` (its ``record.log.history``, ``state.params``).
    ``on_round(server, round)`` is called after each round (e.g. to disconnect a node)."""
    from flwr.supercore.task_identity import TaskIdentity

    from fljax.deploy._server import Server

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    grid = LocalGrid(client_app(deployment), node_configs)
    server = Server(deployment, grid, _server_context())
    server.on_round = on_round
    server.run()
    return server


def _server_context():
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
