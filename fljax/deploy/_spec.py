"""What the server and every site of a deployment share: the :class:`Deployment` (the objects
:func:`fljax.simulate` takes), the federation's shape learnt at the handshake, and
:func:`prepare`, which wires the algorithm's chains and builds the round exactly as the
simulation does (so the server and each site derive the same plan, keys and initial model)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from fljax.algorithms import Algorithm
from fljax.data import FederatedData, from_client_arrays
from fljax.engine import _rules, _setup
from fljax.engine._round import build_round, client_update_for, train_spec
from fljax.models import Model

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Task:
    """The learning task every site's data serves (the server holds no data).

    Attributes mirror :class:`fljax.data.FederatedData`: ``task``, ``num_classes``,
    ``metrics`` (``None``: the task's defaults), ``loss_options`` and the dataset ``name``.
    """

    task: str = "classification"
    num_classes: int = 2
    metrics: tuple[str, ...] | None = None
    loss_options: dict = dataclasses.field(default_factory=dict)
    name: str = "custom"

    @classmethod
    def of(cls, data: FederatedData) -> Task:
        """The task of a simulated federation (to deploy what was simulated)."""
        return cls(data.task, data.num_classes, tuple(data.metrics), dict(data.loss_options),
                   data.name)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SecAggPlus:
    """Flower's SecAgg+ protocol (Bell et al. 2020) for the weighted mean of the messages:
    real key agreement, Shamir shares of each site's mask seeds, dropout recovery.

    Attributes: ``num_shares`` (int, or a fraction of the cohort), ``reconstruction_threshold``
    (int, or a fraction of ``num_shares``), ``clipping_range`` (each coordinate of a message
    is clipped to ``[-r, r]`` before quantization), ``quantization_range`` (levels over
    ``[-r, r]``), ``modulus_range`` (mask space, a power of two <= 2**32), ``max_weight``
    (the largest aggregation weight; each message is scaled by ``w / max_weight`` before it
    is quantized, so ``None``, the largest weight of the federation, keeps the quantization
    error at about ``2 r / quantization_range`` per coordinate) and ``timeout`` (seconds per
    protocol stage; ``None``: wait for every site).
    """

    num_shares: float = 1.0
    reconstruction_threshold: float = 0.66
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    max_weight: float | None = None
    timeout: float | None = None


@dataclasses.dataclass(frozen=True)
class Deployment:
    """A federated run on real sites: what :func:`fljax.simulate` takes, less the data.

    Attributes:
        algorithm: from :func:`fljax.algorithms.get` (synchronous ``federated`` mode).
        model: from :func:`fljax.models.get`.
        task: the :class:`Task` the sites' data serve.
        num_sites: the sites of the federation; each SuperNode serves one (node-config
            ``site`` = 0..num_sites-1), and the run starts when all have connected.
        rounds, clients_per_round (``None``: every site), seed, eval_every: as in
            :func:`fljax.simulate`; per-site keys derive from ``seed`` exactly as there.
        compression, privacy, aggregator: as in :func:`fljax.simulate` (compression and
            local DP run on the sites with their persistent state; client-level DP noise,
            accounting and robust aggregators on the server; record-level DP-SGD in the
            sites' local steps).
        secagg: :class:`SecAggPlus` runs Flower's SecAgg+ workflow for the aggregate.
        run_dir: the server's run folder (``metrics.jsonl``, ``summary.json``,
            ``checkpoint/``, as ``fljax-run`` writes); ``None``: none. ``overwrite``: a folder
            holding results is refused unless True.
        round_timeout: seconds the server waits for a round's replies; a site that has not
            replied by then is dropped from the round (``straggler_policy="drop"``).
        connect_timeout: seconds the server waits for every site to connect.
    """

    algorithm: Algorithm
    model: Model
    task: Task
    num_sites: int
    rounds: int
    clients_per_round: int | None = None
    seed: int = 0
    eval_every: int = 1
    compression: Any = None
    privacy: Any = None
    aggregator: Any = None
    secagg: SecAggPlus | None = None
    run_dir: str | None = None
    overwrite: bool = False
    round_timeout: float = 300.0
    connect_timeout: float = 300.0

    @property
    def cohort(self) -> int:
        return self.num_sites if self.clients_per_round is None else int(self.clients_per_round)


class SiteInfo(NamedTuple):
    """What a site tells the server at the handshake (no data): its index, name, example
    counts and array shapes."""

    site: int
    name: str
    n_train: int
    n_test: int
    x_shape: tuple
    y_shape: tuple


def federation(task: Task, infos: list[SiteInfo], site: int | None = None,
               arrays: tuple | None = None) -> FederatedData:  # fmt: skip
    """The federation as one party holds it: every site's counts and names, and the data of
    ``site`` only (``arrays = (x_train, y_train, x_test, y_test)``), or of none (the server).
    The padded sizes follow from every site's counts, as in the simulation."""
    infos = sorted(infos, key=lambda i: i.site)
    rows = range(0, 0) if site is None else range(site, site + 1)
    parts = [[], [], [], []] if arrays is None else [[a] for a in arrays]
    hosted = (rows, [i.n_train for i in infos], [i.n_test for i in infos],
              tuple(infos[0].x_shape), tuple(infos[0].y_shape))  # fmt: skip
    return from_client_arrays(*parts, task=task.task, num_classes=task.num_classes,
                              name=task.name, client_names=[i.name for i in infos],
                              metrics=task.metrics, loss_options=task.loss_options,
                              hosted=hosted)  # fmt: skip


class Prepared(NamedTuple):
    """A deployment wired for one federation: the algorithm with its chains, the privacy
    plan, the round (its stages), the initial model and the run's root key."""

    algorithm: Algorithm
    dp_plan: Any
    round_fn: Any
    params: PyTree
    root: jax.Array
    setup: _rules.Setup


def _refuse(dep: Deployment, fed: FederatedData) -> None:
    """What a deployment does not run, with the reason."""
    algorithm = dep.algorithm
    if algorithm.mode != "federated":
        raise ValueError(
            f"algorithm {algorithm.name!r} trains in mode {algorithm.mode!r}; a deployment "
            "runs synchronous federated rounds (mode 'federated'): centralized, cyclic, "
            "local-only and asynchronous training are simulation-only"
        )
    if isinstance(algorithm.local_steps, tuple):
        raise ValueError("algorithm: per-client local_steps are simulation-only; deployed "
                         "sites take the algorithm's common local work")  # fmt: skip
    if dep.num_sites != fed.num_clients:
        raise ValueError(f"num_sites={dep.num_sites} but {fed.num_clients} sites joined")
    if dep.secagg is None:
        return
    if dep.privacy is not None and dep.privacy.level == "client":
        raise ValueError(
            "secagg: Flower's SecAgg+ returns the weighted mean of the sites' messages, not "
            "client-level DP's clipped sum; use local DP (privacy level 'local') with it, or "
            "client-level DP without it"
        )
    if dep.aggregator is not None or algorithm.aggregator.linear is None:
        raise ValueError("secagg: Flower's SecAgg+ computes a weighted mean; robust and "
                         "non-linear aggregators need every message in the clear")  # fmt: skip
    if algorithm.server_finalize is not None:
        raise ValueError(
            f"secagg: algorithm {algorithm.name!r} uploads a second message (its control "
            "variates) that the server needs per site; Flower's SecAgg+ hides every "
            "individual message: use fedavg, fedprox, fedopt-style algorithms with it"
        )


def prepare(dep: Deployment, fed: FederatedData) -> Prepared:
    """Checks ``dep`` against the table of :data:`fljax.engine.RULES`, then wires it as
    :func:`fljax.simulate` does: privacy plan, chains, the round's stages, initial model."""
    k = dep.cohort
    _rules.validate_arguments(dep.algorithm, dep.model, fed, dep.rounds, k, dep.eval_every,
                              dep.seed, 0.0, "drop")  # fmt: skip
    _rules.validate_components(dep.compression, None, dep.privacy, None, None, None, "vmap",
                               dep.aggregator, None, None)  # fmt: skip
    setup = _rules.Setup(dep.algorithm, fed, k, 0.0, "drop", dep.compression, None,
                         dep.privacy, None, None, dep.aggregator)  # fmt: skip
    _rules.check(setup)
    _refuse(dep, fed)
    dp_plan = None if dep.privacy is None else _setup.privacy_plan_of(setup, dep.rounds)
    algorithm = _setup.wire_components(dep.algorithm, setup, dp_plan)
    round_fn = build_round(algorithm, dep.model, fed, k, dp_plan=dp_plan)
    root = jax.random.key(int(dep.seed))
    params = _setup.initial_params(dep.model, fed, root, None)
    return Prepared(algorithm, dp_plan, round_fn, params, root, setup)


def initial_site_states(algorithm: Algorithm, params: PyTree) -> tuple:
    """A site's states before its first round, as the simulation initialises them: its
    algorithm state (personal model, control variate), its client-chain state, and the
    server's algorithm state."""
    if algorithm.personal is not None:
        client0 = algorithm.personal.init(params)
    elif algorithm.client_state_init is not None:
        client0 = algorithm.client_state_init(params)
    else:
        client0 = ()
    server0 = () if algorithm.server_state_init is None else algorithm.server_state_init(params)
    return client0, algorithm.client_transform.init(params), server0


def local_update(dep: Deployment, prep: Prepared, fed: FederatedData):
    """The simulation's ``client_update`` for ``fed``'s plan and its training split (padded
    to every site's largest count; rows only for the sites ``fed`` holds)."""
    spec = train_spec(fed, prep.algorithm)
    return client_update_for(prep.algorithm, dep.model, fed, spec, prep.dp_plan)[1], spec


def site_update(dep: Deployment, prep: Prepared, fed: FederatedData):
    """The compiled local update of the site ``fed`` holds and the site's arrays
    ``(x, y, n)``."""
    update, _ = local_update(dep, prep, fed)
    site = fed.hosted[0]
    x, y = np.asarray(fed.train.x[0]), np.asarray(fed.train.y[0])
    return jax.jit(update), (x, y, np.int32(fed.train.num_examples[site]))
