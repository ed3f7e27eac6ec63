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
) -> SimulationResult | list[SimulationResult]:
    r"""Runs ``rounds`` rounds of ``algorithm`` on ``data`` and evaluates every ``eval_every``.

    Args:
        algorithm: from :func:`fljax.algorithms.get`.
        model: from :func:`fljax.models.get`.
        data: the federation, from :func:`fljax.data.load`.
        rounds: total rounds.
        clients_per_round: ``K`` clients sampled uniformly without replacement each round (in
            cyclic mode: the next ``K`` clients of the cycle; ignored by centralized training,
            which has one pooled dataset).
        seed: the one seed every random choice derives from (initialisation, client
            selection, minibatches, stragglers); equal seeds give bit-identical histories on one
            backend and device count.
        eval_every: rounds per compiled block; the global model is evaluated on every client's
            test split at round 0 and after each block (and at the last round).
        params: initial global parameters (a warm start or a pretrained model); by default
            ``model.init`` with a key derived from ``seed``.
        stragglers: fraction of the selected clients that are stragglers each round: exactly
            ``K - round(K (1 - stragglers))`` of them, chosen at random (FedProx's protocol).
        straggler_policy: ``"drop"`` (their updates are not aggregated, as FedAvg does) or
            ``"partial"`` (they send the work done in a uniform 1..E-1 local epochs, as
            FedProx does).
        eval_train: also evaluate the global model on every client's TRAINING split at each
            evaluation (``train_loss``, ``train_accuracy``, ...: the global objective
            :math:`\sum_k p_k F_k(w)` that FedProx's paper plots). ``local_loss`` is always
            reported: the mean loss of the local steps of the round block.
        compression: a :class:`fljax.compress.Compressor` applied to every client's delta after
            the algorithm's own client transform (its state, e.g. error-feedback residuals,
            persists per client); ``bytes_up`` then counts its exact message size and history
            entries carry ``compression_ratio`` (dense float32 bits / message bits).
        downlink: a :class:`fljax.compress.Compressor` for the broadcast: the server keeps its
            model x and the clients' copy x_hat, clients train from x_hat, and after each round
            the server sends ``C(x - x_hat)`` (the gap carries over: implicit error feedback);
            ``bytes_down`` counts its messages.
        privacy: a :class:`fljax.privacy.Privacy` (``fljax.privacy.get(...)``):
            client-level DP-FedAvg (replaces the aggregator; with Poisson client sampling
            ``clients_per_round`` is the EXPECTED cohort and the vmapped cohort is padded to a
            cap), local DP (a client transform before any compression) or record-level DP-SGD
            in the local steps. Every history entry then carries ``epsilon`` and ``privacy``
            (level, accountant, neighbouring relation, delta, noise multiplier, clip norm).
        secure_aggregation: a :class:`fljax.privacy.SecAgg` (``fljax.privacy.get("secagg")``
            or ``"secagg_plus"``): the server's sum becomes a simulated secure sum in
            ``Z_(2^b)`` (exact decoded sum of the fixed-point updates; stragglers dropped under
            ``straggler_policy="drop"`` are the protocol's dropouts, their masks recovered).
            Composes with client-level DP (the clipped updates are summed securely, the server
            adds the noise) and local DP; ``bytes_up`` then counts the protocol's messages and
            each history entry carries ``secagg`` (running totals of PRG expansions, recovered
            masks, recovery messages, dropouts).
        system: a :class:`fljax.system.SystemModel` (``fljax.system.system(profiles, ...)``):
            per-client availability each round, a simulated clock (download + local compute +
            upload from each client's profile and the exact message bytes) and a deadline
            (late clients dropped, or partial work). History entries then carry
            ``sim_time_s``, the simulated seconds elapsed.
        checkpoint_dir: save the full state (orbax) and the history at every evaluation
            there, replacing the previous checkpoint.
        resume: continue from the checkpoint in ``checkpoint_dir`` if there is one: the
            history up to it is returned as it was (callbacks see only the new entries), and
            the result equals that of an uninterrupted run, since round ``r`` always uses
            ``fold_in(rounds_key, r)``. ``rounds`` may be larger than before (extend a run).
        devices: devices to split the selected clients over (default: all local devices of
            the default backend; the largest count dividing ``clients_per_round`` is used).
            On CPU, :func:`fljax.set_host_device_count` exposes one device per core.
            Results are identical for a given device count; across counts they can differ
            in the last bits (the order of the cross-device sum).
        callbacks: called with each history entry as soon as it exists (e.g. to write
            ``metrics.jsonl`` so that nothing computed is lost).
        progress: show a tqdm progress bar.
        seeds: run one independent simulation per seed as ONE compiled program (the rounds
            ``vmap``ped over a leading seed axis of the state and the keys); each run equals
            ``simulate(..., seed=s)`` (up to the last bits where XLA batches arithmetic
            differently). Returns a list of results in the order of ``seeds``; callbacks see
            every run's entries, each with its ``seed``. Runs on one device (the seed axis
            is the batch); not with ``checkpoint_dir``.
        sweep: float hyperparameters of the algorithm to vary inside the same program,
            ``{"client_lr": [0.01, 0.03, 0.1]}`` (lists of equal length, zipped): one run per
            value and seed (seed-major order), each equal to the run with
            ``fljax.algorithms.rebuild(algorithm, client_lr=v)``; entries carry ``sweep``.
            Hyperparameters that fix shapes or Python control flow (epochs, batch size,
            names) cannot vary in one program and are refused; so are ``privacy`` and
            ``secure_aggregation``, whose plans are built per algorithm.
        client_chunk: train the selected clients in chunks of this many (``vmap``ped chunks
            one after another), bounding the memory of local training to one chunk's
            activations; with the weighted mean the deltas' weighted sum streams through the
            chunks (no stack of all deltas). The same result as one ``vmap`` over all of them.
            ``None``: all at once. :func:`auto_client_chunk` derives it from a memory budget.

    Returns:
        A :class:`SimulationResult` (a list of them with ``seeds``).

    Raises:
        ValueError: bad arguments, before anything is compiled.
        NonFiniteUpdateError: a round's aggregated update is NaN/inf; the message names the
            round, and the history entries already passed to ``callbacks`` stay valid.
    """
    args = RunArgs(**{k: v for k, v in locals().items()})
    results = execute(prepare(args))
    return results if seeds is not None or sweep else results[0]
