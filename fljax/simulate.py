"""``fljax.simulate``: the public facade over the round engine (:mod:`fljax.engine`).

A round is a composition of stages (selection, gather and broadcast, local training, the
client chain, reduction, the server chain, the clock) built by :func:`fljax.engine.build_round`;
``eval_every`` rounds run inside one compiled ``lax.scan`` block, and the host evaluates and
writes the history between blocks. See ``docs/architecture.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from fljax.algorithms import Algorithm
from fljax.data import FederatedData
from fljax.engine import (
    AsyncState,
    ClockState,
    NonFiniteUpdateError,
    RoundMetrics,
    RunArgs,
    ServerState,
    auto_client_chunk,
    build_block,
    build_round,
    client_memory_bytes,
    client_models,
    execute,
    full_work_times,
    init_state,
    plan_local_work_for,
    pool_clients,
    prepare,
    select_poisson,
    select_uniform,
)
from fljax.engine._state import stack
from fljax.models import Model
from fljax.privacy import Privacy, SecAgg
from fljax.system import SystemModel

PyTree = Any

__all__ = [
    "AsyncState",
    "ClockState",
    "NonFiniteUpdateError",
    "RoundMetrics",
    "ServerState",
    "SimulationResult",
    "auto_client_chunk",
    "build_block",
    "build_round",
    "client_memory_bytes",
    "client_models",
    "full_work_times",
    "init_state",
    "plan_local_work_for",
    "pool_clients",
    "select_poisson",
    "select_uniform",
    "simulate",
]


@dataclasses.dataclass
class SimulationResult:
    """What :func:`simulate` returns.

    Attributes:
        params: final global parameters.
        history: one dict per evaluation (round 0 and every ``eval_every`` rounds): ``round``,
            ``metrics`` (global scalars: ``test_<m>`` example-weighted over clients, i.e. the
            pooled test metric, ``test_<m>_client_mean``, ``_client_std``, ``_worst``;
            ``local_loss``; ``train_<m>...`` with ``eval_train``), ``client_metrics`` (lists
            over clients), ``bytes_up`` / ``bytes_down`` (cumulative).
        state: final :class:`ServerState` (per-client algorithm state such as SCAFFOLD's
            control variates in ``state.client_states``).
        num_params: scalar parameters of the model.
        wall_s: wall time of the simulation, compilation included.
        compile_s: time spent compiling the round blocks and the evaluation.
        selected: ``[rounds, K]`` int32, the clients selected in each round.
        contributed: ``[rounds, K]`` bool, whose update was aggregated (stragglers dropped).
        num_steps: ``[rounds, K]`` int32, local steps each selected client took.
        personal: the algorithm's Personal hooks (personalized algorithms), else ``None``.
        mode: the algorithm's training mode.
        client_map: the client-mapping strategy the run used (``{"strategy": ...}``; with
            ``client_map="auto"`` also ``"auto": True`` and ``"seconds_per_round"`` of each
            strategy timed, or ``"from": "checkpoint"`` when a resumed run kept its choice).
    """

    params: PyTree
    history: list[dict]
    state: ServerState
    num_params: int
    wall_s: float
    compile_s: float
    selected: np.ndarray
    contributed: np.ndarray
    num_steps: np.ndarray
    personal: Any = None
    mode: str = "federated"
    client_map: dict = dataclasses.field(default_factory=dict)

    @property
    def final_metrics(self) -> dict:
        return self.history[-1]["metrics"]

    @property
    def client_params(self) -> PyTree:
        """Each client's model ``[C, ...]``: its own model in local-only training, its
        personalized model for a personalized algorithm, else the global model every client
        holds."""
        if self.mode == "local" or self.personal is not None:
            return client_models(self.state, self.personal)
        c = len(self.history[0]["client_metrics"]["participation"])
        return stack(self.params, c)


def simulate(
    algorithm: Algorithm,
    model: Model,
    data: FederatedData,
    *,
    rounds: int,
    clients_per_round: int,
    seed: int = 0,
    eval_every: int = 1,
    params: PyTree | None = None,
    stragglers: float = 0.0,
    straggler_policy: str = "drop",
    eval_train: bool = False,
    compression: Any | None = None,
    downlink: Any | None = None,
    privacy: Privacy | None = None,
    secure_aggregation: SecAgg | None = None,
    system: SystemModel | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    devices: Sequence[jax.Device] | None = None,
    callbacks: Sequence[Callable[[dict], None]] = (),
    progress: bool = False,
    seeds: Sequence[int] | None = None,
    sweep: dict[str, Sequence[float]] | None = None,
    client_chunk: int | None = None,
    client_map: str = "vmap",
    aggregator: Any | None = None,
    attack: Any | None = None,
    reject_norm: float | None = None,
    subsets: Sequence[Sequence[bool]] | None = None,
) -> SimulationResult | list[SimulationResult]:
    r"""Runs ``rounds`` rounds of ``algorithm`` on ``data`` and evaluates every ``eval_every``.

    Every argument is explained in full in :class:`fljax.engine.RunArgs`.

    Args:
        algorithm: from ``fljax.algorithms.get``.
        model: from ``fljax.models.get``.
        data: from ``fljax.data.load``.
        rounds: total rounds.
        clients_per_round: ``K``, sampled uniformly without replacement (cyclic: the next K).
        seed: the one seed every random choice derives from (bit-identical reruns).
        eval_every: rounds per compiled block; evaluation at round 0 and after each block.
        params: initial global parameters (warm start); default ``model.init``.
        stragglers: FedProx's stragglers: the fraction of the cohort that straggles.
        straggler_policy: ``"drop"`` stragglers or keep their 1..E-1 epochs (``"partial"``).
        eval_train: also evaluate on every client's training split.
        compression: an uplink :class:`fljax.compress.Compressor` (last in the client chain).
        downlink: a compressor for the broadcast (clients train from their copy ``x_hat``).
        privacy: a :class:`fljax.privacy.Privacy` (client, local or record DP); see ``epsilon``.
        secure_aggregation: a :class:`fljax.privacy.SecAgg` (simulated secure sum; ``secagg``).
        system: a :class:`fljax.system.SystemModel` (availability, clock; ``sim_time_s``).
        checkpoint_dir: save the state here at every evaluation.
        resume: continue from the checkpoint in ``checkpoint_dir``.
        devices: devices for the client axis (default: all local devices).
        progress: a progress bar.
        callbacks: called with each history entry as soon as it exists.
        seeds: one run per seed as ONE compiled program (a list of results).
        sweep: ``{"client_lr": [...]}``: float hyperparameters varied inside the program.
        client_chunk: train the cohort this many clients at a time (bounded memory).
        client_map: ``"vmap"``, ``"device_vmap"``, ``"sequential"`` or ``"auto"`` (the fastest).
        aggregator: a robust aggregator (``fljax.aggregate.get``) replacing the weighted mean.
        attack: poisoning by malicious clients (``fljax.attacks.get``).
        reject_norm: non-finite updates are dropped and counted (``"rejected"``); so are these.
        subsets: ``[C]`` masks, one counterfactual federation each (crossed with seeds).

    Returns:
        A :class:`SimulationResult` (a list with ``seeds``, ``sweep`` or ``subsets``).

    Raises:
        ValueError: bad arguments or combinations (``fljax.engine.RULES``), before compiling.
        NonFiniteUpdateError: a round's aggregated update is NaN/inf (a single client's
            non-finite update is rejected instead, see ``reject_norm``); the message names the
            round, and the history entries already passed to ``callbacks`` stay valid.
    """
    args = RunArgs(**{k: v for k, v in locals().items()})
    results = execute(prepare(args))
    return results if seeds is not None or sweep or subsets is not None else results[0]
