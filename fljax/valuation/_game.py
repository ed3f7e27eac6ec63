"""The cooperative game of a federation: a coalition of sites -> the utility of the model
they train together, evaluated many coalitions and seeds at a time on the runs axis.

``v(S)`` trains the reduced federation ``S`` with :func:`fljax.simulate` (one run per
coalition and seed, ``subsets=`` and ``seeds=`` in ONE compiled program per chunk) and scores
its final global model on a held-out validation split that no site trains or tests on.
``v(empty)`` is the initial model's score. Utilities are memoized per coalition, so the
valuation methods ask for what they need and each coalition is trained once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fljax import metrics as M
from fljax.algorithms import Algorithm
from fljax.client import evaluate_fn
from fljax.data import ClientData, FederatedData
from fljax.models import Model

PyTree = Any


def holdout(data: FederatedData, fraction: float = 0.2, seed: int = 0
            ) -> tuple[FederatedData, ClientData]:  # fmt: skip
    """Moves a random ``fraction`` of every site's TRAINING examples into one pooled
    validation split ``ClientData[1, M, ...]`` (the utility's data; the sites' test splits stay
    untouched for reporting). Returns the federation without them and the validation split."""
    data.whole("holdout")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    x, y, n = (np.asarray(a) for a in data.train)
    keep_x, keep_y, keep_n, val_x, val_y = np.zeros_like(x), np.zeros_like(y), n.copy(), [], []
    for c in range(data.num_clients):
        order = rng.permutation(int(n[c]))
        m = int(round(fraction * n[c])) if n[c] > 1 else 0
        m = min(m, int(n[c]) - 1)
        val_x.append(x[c, order[:m]])
        val_y.append(y[c, order[:m]])
        rest = order[m:]
        keep_x[c, : rest.size], keep_y[c, : rest.size] = x[c, rest], y[c, rest]
        keep_n[c] = rest.size
    vx, vy = np.concatenate(val_x), np.concatenate(val_y)
    if vx.shape[0] == 0:
        raise ValueError("holdout: the sites are too small to hold out any example")
    validation = ClientData(vx[None], vy[None], np.array([vx.shape[0]], np.int32))
    return dataclasses.replace(data, train=ClientData(keep_x, keep_y, keep_n)), validation


def stack_params(results) -> PyTree:
    """The final global models of ``simulate`` results stacked ``[R, ...]`` on the host
    (results of a multi-run program live on the runs mesh; numpy joins them safely)."""
    return jax.tree.map(lambda *p: np.stack([np.asarray(a) for a in p]),
                        *[r.params for r in results])


def _check_validation(validation, data: FederatedData) -> ClientData:
    """``validation`` as ``ClientData[1, M, ...]`` (also from an ``(x, y)`` pair)."""
    if isinstance(validation, ClientData):
        x, y, n = (np.asarray(a) for a in validation)
    elif isinstance(validation, tuple) and len(validation) == 2:
        x, y = (np.asarray(a) for a in validation)
        x, y, n = x[None], y[None], np.array([x.shape[0]], np.int32)
    else:
        raise ValueError("validation must be a fljax.data.ClientData [1, M, ...] or an (x, y) "
                         f"pair, got {type(validation).__name__}")  # fmt: skip
    if x.shape[0] != 1 or x.shape[2:] != data.feature_shape or int(n[0]) < 1:
        raise ValueError(f"validation must hold one pooled split of examples shaped "
                         f"{data.feature_shape}, got x{x.shape} with {n.tolist()} examples")
    return ClientData(x.astype(np.float32), y, n.astype(np.int32))


@dataclasses.dataclass
class Game:
    """Coalition utilities of a federation, memoized (build it with :func:`game`).

    Attributes:
        sites: the players (the federation's client names).
        seeds: one training run per seed for every coalition; utilities are ``[seeds]``.
        metric: the validation metric or ``"loss"`` (its sign flipped when lower is better,
            so a larger utility is always a better model).
        federations: how many federations (coalition x seed runs) were trained so far;
            ``programs``: how many compiled programs ran them.
    """

    algorithm: Algorithm
    model: Model
    data: FederatedData
    validation: ClientData
    metric: str
    seeds: list
    rounds: int
    clients_per_round: int
    chunk: int
    options: dict
    cache: dict = dataclasses.field(default_factory=dict)
    federations: int = 0
    programs: int = 0
    _score: Any = None

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.data.client_names)

    @property
    def num_sites(self) -> int:
        return self.data.num_clients

    def score(self, params: PyTree) -> np.ndarray:
        """The utility of models stacked ``[R, ...]``: ``[R]`` validation metric values."""
        if self._score is None:
            names = () if self.metric == "loss" else (self.metric,)
            fn = evaluate_fn(self.model, self.data.task, False, names, self.data.loss_options)
            sign = 1.0 if M.HIGHER_IS_BETTER.get(self.metric, self.metric != "loss") else -1.0
            v = self.validation
            self._score = jax.jit(jax.vmap(
                lambda p: sign * fn(p, v.x, v.y, v.num_examples)[self.metric][0]))  # fmt: skip
        r = jax.tree.leaves(params)[0].shape[0]
        pad = 1 << max(0, (r - 1).bit_length())  # few batch shapes, few compilations
        padded = jax.tree.map(lambda p: jnp.concatenate([p, jnp.repeat(p[:1], pad - r, 0)]),
                              params)  # fmt: skip
        return np.asarray(self._score(padded), np.float64)[:r]

    def utilities(self, masks: Sequence[Sequence[bool]]) -> np.ndarray:
        """``v(S)`` of every coalition mask (``[C]`` bools): ``[seeds, len(masks)]``, training
        the coalitions not seen before (``chunk`` runs of coalitions x seeds per program)."""
        keys = [tuple(bool(b) for b in m) for m in masks]
        for k in keys:
            if len(k) != self.num_sites:
                raise ValueError(f"a coalition mask needs {self.num_sites} entries, got {len(k)}")
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if any(not any(k) for k in todo):
            self.cache[(False,) * self.num_sites] = self._initial_utilities()
            todo = [k for k in todo if any(k)]
        per_program = max(1, self.chunk // len(self.seeds))
        for start in range(0, len(todo), per_program):
            self._train(todo[start:start + per_program])
        return np.stack([self.cache[k] for k in keys], axis=1)

    def _initial_utilities(self) -> np.ndarray:
        """``v(empty)``: each seed's initial global model (as :func:`fljax.simulate` draws it)."""
        from fljax.valuation._gtg import initial_models

        return self.score(initial_models(self.model, self.data, self.seeds,
                                         self.options.get("params")))  # fmt: skip

    def _train(self, coalitions: list) -> None:
        from fljax.simulate import simulate

        results = simulate(self.algorithm, self.model, self.data, rounds=self.rounds,
                           clients_per_round=self.clients_per_round, seeds=self.seeds,
                           eval_every=self.rounds, subsets=np.asarray(coalitions, bool),
                           **self.options)  # fmt: skip
        params = stack_params(results)
        values = self.score(params).reshape(len(self.seeds), len(coalitions))
        for j, k in enumerate(coalitions):
            self.cache[k] = values[:, j]
        self.federations += len(results)
        self.programs += 1


def game(
    algorithm: Algorithm,
    model: Model,
    data: FederatedData,
    *,
    validation: ClientData | tuple,
    rounds: int,
    clients_per_round: int | None = None,
    seeds: Sequence[int] = (0,),
    metric: str | None = None,
    chunk: int = 128,
    **simulate_options: Any,
) -> Game:
    """The game ``v(S)`` = ``metric`` on ``validation`` of the global model that the sites
    ``S`` train with ``algorithm`` for ``rounds`` rounds (one run per seed).

    Args:
        validation: a held-out split no site trains on (:func:`holdout`), ``ClientData[1,
            M, ...]`` or ``(x, y)``; never the sites' test splits.
        clients_per_round: default every site: each coalition trains with full participation
            of its sites (see ``fljax.simulate``'s ``subsets``); smaller: a fixed-size cohort
            drawn among the coalition's sites (coalitions smaller than it cannot be valued).
        metric: a metric of the task (default its first, e.g. ``accuracy``) or ``"loss"`` (the
            task's loss); with a lower-is-better metric the utility is its negative.
        chunk: coalition x seed runs per compiled program (memory bound).
        **simulate_options: passed on to :func:`fljax.simulate` (``params``, ``compression``,
            ``client_map``, ...), the same for every coalition.
    """
    from fljax.engine._runs import check_seeds

    seeds = [int(s) for s in seeds]
    check_seeds(seeds)
    metric = data.metrics[0] if metric is None else metric
    if metric != "loss":
        M.check_metrics(data.task, (metric,), data.num_classes)
    k = data.num_clients if clients_per_round is None else int(clients_per_round)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    for bad in ("seed", "seeds", "subsets", "rounds", "eval_every", "sweep"):
        if bad in simulate_options:
            raise ValueError(f"{bad!r} is set by the game itself; not a simulate option here")
    return Game(algorithm, model, data, _check_validation(validation, data), metric, seeds,
                int(rounds), k, chunk, dict(simulate_options))  # fmt: skip
