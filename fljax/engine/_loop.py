"""The block loop: ``eval_every`` rounds per compiled ``lax.scan`` block, evaluation and
history between blocks, checkpoints and resume; several seeds / swept hyperparameters as one
``vmap``ped program along a leading run axis."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fljax import distributed
from fljax._devices import (
    RUN_AXIS,
    client_count,
    client_mesh,
    client_sharding,
    replicated,
    run_mesh,
    run_sharding,
    shard_clients,
)
from fljax._io import load_state, save_state, step_rounds
from fljax.algorithms import rebuild
from fljax.attacks import malicious_clients
from fljax.client import evaluate_fn
from fljax.data import ClientData
from fljax.engine import _auto, _rules, _setup
from fljax.engine._history import (
    Recorder,
    RunLog,
    component_records,
    robust_records,
    stack_rounds,
)
from fljax.engine._identity import differences, fingerprint
from fljax.engine._progress import Progress
from fljax.engine._robust import RobustPlan, root_client, sample_root
from fljax.engine._round import build_block, build_round, init_state, initial_state, train_spec
from fljax.engine._runs import check_seeds, check_subsets, check_sweep
from fljax.engine._state import ServerState
from fljax.models import num_params

PyTree = Any
SERIAL_MODES = ("cyclic", "centralized")  # one client at a time


@dataclasses.dataclass
class RunArgs:
    r"""The arguments of :func:`fljax.simulate`, explained in full.

    Attributes:
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
            Client-level DP amplifies by sampling only under uniform or Poisson selection;
            with another ``system`` selection rule (fastest, oort, ...) every client is
            charged as if selected every round and ``privacy`` says so (``amplification``).
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
            The training data is split along clients over the same devices (padded to a
            multiple of their count), so each holds about ``1 / D`` of the federation, and so
            are the per-client states (SCAFFOLD's c_i, compression residuals) when the
            client count divides over the devices. On CPU,
            :func:`fljax.set_host_device_count` exposes one device per core. In a
            multi-process run (:mod:`fljax.distributed`) every process's devices are used
            and the cohort must be a multiple of their count.
            Results are identical for a given device count; across counts they can differ
            in the last bits (the order of the cross-device sum).
        callbacks: called with each history entry as soon as it exists (e.g. to write
            ``metrics.jsonl`` so that nothing computed is lost).
        progress: show progress on stderr: a tqdm bar on a terminal, else one line per
            evaluation; "compiling..." until the first block ran.
        seeds: run one independent simulation per seed as ONE compiled program (the rounds
            ``vmap``ped over a leading seed axis of the state and the keys); each run equals
            ``simulate(..., seed=s)`` (up to the last bits where XLA batches arithmetic
            differently). Returns a list of results in the order of ``seeds``; callbacks see
            every run's entries, each with its ``seed``. The runs are split over a
            ``("runs", "clients")`` device mesh (the cohort over ``clients`` as for one run);
            with ``checkpoint_dir`` all runs are saved as one step and resume together.
        sweep: float hyperparameters of the algorithm to vary inside the same program,
            ``{"client_lr": [0.01, 0.03, 0.1]}`` (lists of equal length, zipped): one run per
            value and seed (seed-major order), each equal to the run with
            ``fljax.algorithms.rebuild(algorithm, client_lr=v)``; entries carry ``sweep``.
            Hyperparameters that fix shapes or Python control flow (epochs, batch size,
            names) cannot vary in one program and are refused. Privacy, secure aggregation
            and compression are wired into every rebuilt algorithm (the privacy plan does
            not depend on float hyperparameters).
        client_chunk: train the selected clients in chunks of this many (``vmap``ped chunks
            one after another), bounding the memory of local training to one chunk's
            activations; with the weighted mean the deltas' weighted sum streams through the
            chunks (no stack of all deltas). The same result as one ``vmap`` over all of them.
            ``None``: all at once. :func:`auto_client_chunk` derives it from a memory budget.
        client_map: how clients are mapped (:class:`fljax.engine.ClientMap`): ``"vmap"``
            (all batched, the default), ``"device_vmap"`` (each device batches its own group
            under ``shard_map``) or ``"sequential"`` (each device runs its clients one after
            another; convolutions stay ordinary instead of grouped) or ``"auto"`` (each
            applicable strategy timed on one round of the run, the fastest kept; the choice
            and timings in ``SimulationResult.client_map`` and saved with checkpoints, so a
            resumed run keeps it). Every strategy gives the same result up to float32
            rounding; name the strategy for bit-for-bit reruns.
        aggregator: a robust :class:`fljax.aggregate.Aggregator` (``fljax.aggregate.get``:
            median, trimmed mean, Krum, Multi-Krum, Bulyan, geometric median, centered
            clipping, norm bounding, FLTrust; ``bucket_size=`` for bucketing) replacing the
            algorithm's weighted mean (mode ``federated``; algorithms that aggregate with the
            weighted mean). Selection rules record the clients they kept in
            ``history[...]["robust"]``.
        attack: a :class:`fljax.attacks.Attack` (``fljax.attacks.get``): its malicious clients
            (fixed for the run) poison their training data before the run and / or send
            crafted updates inside the compiled round; history entries carry ``attack`` and,
            for a backdoor, ``metrics["backdoor_success"]``.
        reject_norm: per-client fault isolation always drops a non-finite update from the
            round's aggregate (counted in ``history[...]["rejected"]``) instead of stopping
            the run; with ``reject_norm`` updates longer than it are dropped too.
            ``NonFiniteUpdateError`` remains for a non-finite aggregate and for a round in
            which every update sent was rejected (nothing to aggregate).
        subsets: counterfactual federations on the runs axis: a list of participation masks
            (``C`` booleans each, True = the site belongs to that run's federation), one run
            per mask crossed with ``seeds`` and ``sweep`` (seed-major, then sweep, then
            subset), all in one compiled program. An excluded site is never selected, never
            trains and carries weight 0; the federation's size ``N`` in SCAFFOLD's and
            FedDyn's server updates is the run's site count. With ``clients_per_round < C``
            the fixed-size cohort is drawn uniformly among the included sites (the first
            ``K`` of the same permutation, so an all-sites mask reproduces the plain run);
            with ``clients_per_round == C`` every included site takes part in every round.
            Each run equals a separate run on the reduced federation (up to float rounding
            and, with minibatches, the per-site keys, which fold in the site's index).
            History entries carry ``subset`` (the included sites). Synchronous mode only,
            without a system model, client-level DP, secure aggregation or robust
            aggregation (:data:`fljax.engine.RULES`); :mod:`fljax.valuation` builds on it.
    """

    algorithm: Any
    model: Any
    data: Any
    rounds: int
    clients_per_round: int
    seed: int = 0
    eval_every: int = 1
    params: PyTree | None = None
    stragglers: float = 0.0
    straggler_policy: str = "drop"
    eval_train: bool = False
    compression: Any | None = None
    downlink: Any | None = None
    privacy: Any | None = None
    secure_aggregation: Any | None = None
    system: Any | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    devices: Sequence[jax.Device] | None = None
    callbacks: Sequence[Callable[[dict], None]] = ()
    progress: bool = False
    seeds: Sequence[int] | None = None
    sweep: dict | None = None
    client_chunk: int | None = None
    client_map: str = "vmap"
    aggregator: Any | None = None
    attack: Any | None = None
    reject_norm: float | None = None
    subsets: Sequence | None = None


def _setup_of(a: RunArgs, clients_per_round: int) -> _rules.Setup:
    return _rules.Setup(
        a.algorithm, a.data, clients_per_round, a.stragglers, a.straggler_policy, a.compression,
        a.downlink, a.privacy, a.secure_aggregation, a.system, a.aggregator, a.attack,
        a.subsets is not None,
    )  # fmt: skip


def _wire_algorithm(a: RunArgs, setup: _rules.Setup):
    """The algorithm with privacy, secure aggregation and compression in its chains, and
    the privacy plan (``None`` without privacy)."""
    dp_plan = None if a.privacy is None else _setup.privacy_plan_of(setup, a.rounds)
    return _setup.wire_components(a.algorithm, setup, dp_plan), dp_plan


@dataclasses.dataclass
class Run:
    """A prepared run: the compiled pieces, the state and the host logs."""

    args: RunArgs
    algorithm: Any
    state: Any
    k_rounds: Any
    train: Any
    block_for: Callable[[str], Any]
    recorder: Recorder
    logs: list
    width: int
    params0: Any
    mesh: Any
    strategies: tuple[str, ...]
    identity: dict = dataclasses.field(default_factory=dict)  # saved with steps, see _identity
    # (computed only with a checkpoint_dir: it hashes the whole federation)
    run_block: Any = None
    client_map: dict = dataclasses.field(default_factory=dict)
    compiled: dict = dataclasses.field(default_factory=dict)  # block length -> executable
    compile_s: float = 0.0
    t_start: float = 0.0

    def choose_client_map(self, start: int, recorded: str | None = None) -> None:
        """The run's block with its client-mapping strategy: the one asked for; with
        ``"auto"``, the one a checkpoint recorded, else the fastest of :attr:`strategies`
        timed on round ``start`` (:mod:`fljax.engine._auto`)."""
        asked = self.args.client_map
        if asked != _auto.AUTO:
            self.client_map = {"strategy": asked}
        elif recorded is not None:
            self.client_map = {"strategy": recorded, "auto": True, "from": "checkpoint"}
        else:
            inputs = (self.state, self.k_rounds, jnp.asarray([start], jnp.int32), self.train)
            best, seconds, comp, one_round = _auto.fastest(self.block_for, inputs,
                                                           self.strategies)  # fmt: skip
            self.compile_s += comp
            if one_round is not None:  # the timed executable serves one-round blocks
                self.compiled[1] = one_round
            timings = {k: round(v, 6) for k, v in seconds.items()}
            self.client_map = {"strategy": best, "auto": True, "seconds_per_round": timings}
        self.run_block = self.block_for(self.client_map["strategy"])


def _stacked_start(a, algorithm, round_fn, runs, params, given):
    """Every run's initial state and rounds key from its own seed, stacked on a run axis."""
    starts = []
    for s_, _, _ in runs:
        root = jax.random.key(s_)
        k_init, k_rounds = jax.random.split(root)
        p = params if given is not None else a.model.init(k_init, a.data.sample())
        n = train_spec(a.data, algorithm).num_examples.shape[0]
        starts.append((initial_state(round_fn, algorithm, p, n, root), k_rounds))
    state = jax.tree.map(lambda *x: jnp.stack(x), *[st for st, _ in starts])
    return state, jnp.stack([k for _, k in starts])


def _runs_block(a, setup, dp_plan, algorithm, axes, build_args, spmd_axis_name=None,
                robust=None):  # fmt: skip
    """The block ``vmap``ped over runs: each run's algorithm rebuilt inside the trace from its
    swept values (``fljax.algorithms.rebuild``, with the run's components wired in) and each
    run's participation mask handed to its rounds. ``axes``: :class:`RunAxes`."""
    hp = {k: jnp.asarray([v[i] for _, i, _ in axes.runs], jnp.float32)
          for k, v in axes.sweep.items()}  # fmt: skip
    masks = None
    if axes.masks is not None:
        masks = jnp.asarray(np.stack([axes.masks[j] for _, _, j in axes.runs]))
    subsets = masks is not None

    def block_for(values, mask, st, key, ids, tr):
        algo = algorithm
        if values:
            algo = _setup.wire_components(rebuild(a.algorithm, **values), setup, dp_plan)
        round_fn = build_round(algo, *build_args, robust=robust, subsets=subsets)
        return build_block(round_fn)(st, key, ids, tr, mask)

    swept = jax.vmap(block_for, in_axes=(0, None if masks is None else 0, 0, 0, None, None),
                     spmd_axis_name=spmd_axis_name)  # fmt: skip
    return functools.partial(swept, hp, masks)


def _evaluators(a, algorithm, state, test, mesh) -> tuple[list, Callable, Any, float]:
    """The compiled scorers: test (and train) splits, the global model beside personal ones.
    Splits are sharded along clients on a mesh (padded; the host keeps the real clients)."""
    personal, data, model = algorithm.personal, a.data, a.model
    per_client = algorithm.mode == "local" or personal is not None
    eval_params = (lambda st: client_models(st, personal)) if per_client else (lambda st: st.params)
    t0 = time.perf_counter()

    def compiled(per, params, split):
        fn = evaluate_fn(model, data.task, per, data.metrics, data.loss_options)
        return jax.jit(fn).lower(params, *split).compile()

    def placed(split):
        split = ClientData(*(np.asarray(x) for x in split))
        if mesh is None:
            return ClientData(*(jnp.asarray(x) for x in split))
        if per_client:  # per-client models [C, ...] meet the split client by client
            data.whole(f"evaluating {algorithm.name}'s per-client models")
            return distributed.put(split, replicated(mesh))
        return shard_clients(split, mesh, data.num_clients, _first_hosted(data))

    test = placed(test)
    splits = [("test", compiled(per_client, eval_params(state), test), test,
               np.asarray(data.test.num_examples))]  # fmt: skip
    if a.eval_train:
        train_eval = placed(data.train)
        splits.append(("train", compiled(per_client, eval_params(state), train_eval),
                       train_eval, np.asarray(data.train.num_examples)))  # fmt: skip
    evaluate_global = None
    if personal is not None and personal.reports_global:  # Ditto, APFL: the global model too
        evaluate_global = compiled(False, state.params, test)
    return splits, eval_params, evaluate_global, time.perf_counter() - t0


def _first_hosted(data) -> int:
    """The first client this process holds (0 unless it holds part of the federation)."""
    return 0 if data.hosted is None else data.hosted[0]


class RunAxes(NamedTuple):
    """The runs of one program: ``runs`` ``[(seed, sweep index, subset index)]`` (seed-major,
    then sweep, then subset), the swept values and the participation masks ``[S, C]``."""

    runs: list
    sweep: dict
    masks: np.ndarray | None

    @property
    def multi(self) -> bool:
        """The program returns a list of runs (``seeds``, ``sweep`` or ``subsets`` given)."""
        return len(self.runs) > 1 or bool(self.sweep) or self.masks is not None


def _runs_of(a: RunArgs) -> RunAxes:
    """Every run of the program (:class:`RunAxes`), after checking the run arguments."""
    sweep_values = check_sweep(a.sweep, a.algorithm)
    masks = check_subsets(a.subsets, a.data.num_clients, a.clients_per_round)
    run_seeds = [int(a.seed)] if a.seeds is None else [int(s) for s in a.seeds]
    n_values = len(next(iter(sweep_values.values()))) if sweep_values else 1
    n_masks = 1 if masks is None else len(masks)
    runs = [(s_, i, j) for s_ in run_seeds for i in range(n_values) for j in range(n_masks)]
    return RunAxes(runs, sweep_values, masks)


def _checked_setup(a: RunArgs) -> tuple[_rules.Setup, int]:
    """Argument checks, then the requirement table; the setup and the cohort size ``K``."""
    _rules.validate_arguments(a.algorithm, a.model, a.data, a.rounds, a.clients_per_round,
                              a.eval_every, a.seed, a.stragglers, a.straggler_policy)  # fmt: skip
    check_seeds(a.seeds)
    _rules.validate_components(a.compression, a.downlink, a.privacy, a.secure_aggregation,
                               a.system, a.client_chunk, a.client_map, a.aggregator, a.attack,
                               a.reject_norm)  # fmt: skip
    mode = a.algorithm.mode
    k = {"centralized": 1, "async": a.algorithm.hparams.get("buffer_size")}.get(
        mode, a.clients_per_round
    )
    setup = _setup_of(a, k)
    _rules.check(setup)
    return setup, k


def validate(a: RunArgs) -> None:
    """The checks :func:`prepare` makes before building anything: every argument, the
    requirement table (:data:`fljax.engine.RULES`), seeds and the sweep; raises ValueError
    naming the field. Nothing is compiled or trained."""
    _checked_setup(a)
    _runs_of(a)


def _mesh_for(a: RunArgs, mode: str, width: int, num_runs: int, multi: bool):
    """The device mesh: ``clients`` for one run, ``("runs", "clients")`` for many (the
    cohort, or an asynchronous buffer, split over ``clients``); none for the modes that train
    one client at a time."""
    if mode in SERIAL_MODES:
        if distributed.multiprocess():
            raise ValueError(f"algorithm {a.algorithm.name!r} trains one client at a time "
                             f"({mode}); a multi-process run splits each round's cohort over "
                             "the processes: run it in a single process")  # fmt: skip
        return None
    d = jax.device_count()
    if distributed.multiprocess() and width % d:
        padded = "" if width == a.clients_per_round else (
            f" (the padded cap of the Poisson cohort, not clients_per_round="
            f"{a.clients_per_round}: set the privacy's max_cohort to a multiple of {d})")
        raise ValueError(
            f"clients_per_round: a multi-process run splits each round's cohort over all {d} "
            f"devices of its {jax.process_count()} processes, so the cohort must be a multiple "
            f"of {d}; it is {width}{padded}"
        )  # fmt: skip
    return run_mesh(num_runs, width, a.devices) if multi else client_mesh(width, a.devices)


def prepare(a: RunArgs) -> Run:
    """Validates ``a``, wires the components, builds the stages, places the data on the
    devices (training data sharded along clients) and compiles evaluation."""
    t_start = time.perf_counter()
    setup, k = _checked_setup(a)
    axes = _runs_of(a)
    runs, sweep_values = axes.runs, axes.sweep
    asked, clean = a, a.data
    a, malicious = _poisoned(a)
    multi, mode = a.seeds is not None or axes.multi, a.algorithm.mode
    algorithm, dp_plan = _wire_algorithm(a, setup)
    width = _setup.cohort_width(setup, dp_plan)
    root = jax.random.key(runs[0][0])
    params = _setup.initial_params(a.model, a.data, root, a.params)
    for c in (a.compression, a.downlink):
        if c is not None:
            c.bits(params)  # validates fraction / k against the model before compiling
    spec = train_spec(a.data, algorithm)
    base = init_state(algorithm, params, spec.num_examples.shape[0])
    wire = _setup.wire_bytes(setup, algorithm, a.model, params, base, width)
    mesh = _mesh_for(a, mode, width, len(runs), multi)
    secure = a.secure_aggregation is not None
    build_args = (a.model, a.data, k, mesh, _setup.stragglers_of(setup), a.downlink, dp_plan,
                  a.system, wire.bytes, a.client_chunk, secure)  # fmt: skip
    robust = _robust_plan(a, clean, malicious, spec, runs[0][0])
    round_fn = build_round(algorithm, *build_args, _auto.default(a.client_map), robust=robust)
    state = initial_state(round_fn, algorithm, params, spec.num_examples.shape[0], root)
    k_rounds = jax.random.split(root)[1]
    if mesh is None:
        train = ClientData(*(jnp.asarray(x) for x in spec))
    else:  # server state replicated (per-client states split), training data split
        placement = state_placement(state, mesh, spec.num_examples.shape[0])
        state = distributed.put(state, placement)
        train = shard_clients(spec, mesh, a.data.num_clients, _first_hosted(a.data))
    # Evaluation is compiled for ONE run's state; with many runs it is applied run by run.
    splits, eval_params, evaluate_global, compile_s = _evaluators(
        a, algorithm, state, a.data.test, mesh
    )
    if multi:
        state, k_rounds = _stacked_start(a, algorithm, round_fn, runs, params, a.params)
        if mesh is not None:
            state = distributed.put(state, run_sharding(mesh))
    spmd = None if mesh is None else RUN_AXIS

    def block_for(strategy: str):
        """The jitted block of rounds with clients mapped by ``strategy``."""
        if multi and (sweep_values or axes.masks is not None):
            return jax.jit(_runs_block(a, setup, dp_plan, algorithm, axes,
                                       (*build_args, strategy), spmd, robust))  # fmt: skip
        block = build_block(build_round(algorithm, *build_args, strategy, robust=robust))
        if multi:
            return jax.jit(jax.vmap(block, in_axes=(0, 0, None, None), spmd_axis_name=spmd))
        return jax.jit(_kept_in_place(block, None if mesh is None else placement))

    recorder = Recorder(
        mode, wire, splits, eval_params, evaluate_global, splits[0][2],
        np.asarray(a.data.test.num_examples), multi, a.secure_aggregation, a.callbacks,
        component_records(a.compression, wire, params, a.system, mode, a.secure_aggregation,
                          width, dp_plan)
        + robust_records(a.aggregator, a.attack, malicious, clean, a.model, mode),
    )  # fmt: skip
    logs = [RunLog(s_, a.data.num_clients, {kk: v[i] for kk, v in sweep_values.items()},
                   None if axes.masks is None else np.flatnonzero(axes.masks[j]).tolist())
            for s_, i, j in runs]  # fmt: skip
    strategies = _auto.candidates(mode in SERIAL_MODES, mesh, a.client_chunk)
    return Run(a, algorithm, state, k_rounds, train, block_for, recorder, logs, width, params,
               mesh, strategies,
               fingerprint(asked, params) if a.checkpoint_dir is not None else {},
               compile_s=compile_s,
               t_start=t_start)  # fmt: skip


def state_placement(state: ServerState, mesh, num_clients: int):
    """The shardings of a run's state on ``mesh``: the per-client states ``[C, ...]`` (the
    algorithm's and the client chain's) split along clients when ``C`` divides over the
    devices (each device holds ``1 / D`` of them), everything else replicated."""
    everywhere = replicated(mesh)
    placement = jax.tree.map(lambda _: everywhere, state)
    if num_clients % client_count(mesh):
        return placement
    split = client_sharding(mesh)
    per_client = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: split if np.shape(x)[:1] == (num_clients,) else everywhere, tree)
    return placement._replace(client_states=per_client(state.client_states),
                              client_transform_states=per_client(
                                  state.client_transform_states))  # fmt: skip


def _kept_in_place(block, placement):
    """``block`` whose new state keeps ``placement`` (the compiled block's outputs feed its
    next call, which expects the same shardings)."""
    if placement is None:
        return block

    def run_block(state, rounds_key, round_ids, train):
        state, metrics = block(state, rounds_key, round_ids, train)
        return jax.lax.with_sharding_constraint(state, placement), metrics

    return run_block


def _poisoned(a: RunArgs):
    """``a`` with the attack's data poisoning applied to the training split, and the
    malicious clients ``[C]`` (``None`` without an attack)."""
    if a.attack is None:
        return a, None
    malicious = malicious_clients(a.attack, a.data.num_clients)
    if a.attack.poison is not None:
        a.data.whole(f"the {a.attack.name} attack's data poisoning")
        rng = np.random.default_rng(a.attack.seed)
        a = dataclasses.replace(a, data=a.attack.poison(a.data, malicious, rng))
    return a, malicious


def _robust_plan(a: RunArgs, clean, malicious, spec, seed: int) -> RobustPlan:
    """The static :class:`RobustPlan`: crafted updates, the rejection cap, FLTrust's root."""
    root = None
    agg = a.aggregator
    if agg is not None and (agg.root is not None or agg.root_size is not None):
        pair = agg.root
        if pair is None:  # drawn from the clean pooled training data
            clean.whole("drawing FLTrust's root dataset from the pooled training data")
            pair = sample_root(clean.train, agg.root_size, np.random.default_rng(seed))
        root = root_client(pair, spec)
    craft = None if a.attack is None else a.attack.craft
    return RobustPlan(malicious, craft, a.reject_norm, root)


def client_models(state: ServerState, personal=None) -> PyTree:
    """Every client's own model stacked ``[C, ...]`` from ``state``: its personalized model
    (``personal.model(global, client_state)``) or, without ``personal``, its local model."""
    if personal is None:
        return state.client_states
    return jax.vmap(personal.model, in_axes=(None, 0))(state.params, state.client_states)


def _run_of(run: Run, tree, i: int):
    """Run ``i``'s slice of a pytree stacked over runs (the tree itself for one run)."""
    return jax.tree.map(lambda x: x[i], tree) if run.recorder.multi else tree


def _record_start(run: Run) -> int:
    """Round 0: every run's first history entry and checkpoint."""
    for i, log in enumerate(run.logs):
        run.recorder.record(0, _run_of(run, run.state, i), None, log)
    _checkpoint(run, 0)
    return 0


def _restore(run: Run, progress: dict) -> None:
    """Every run's log from a checkpoint, after checking it holds the same runs."""
    saved = progress["runs"] if run.recorder.multi else [progress]
    if run.recorder.multi:
        want = [(log.seed, log.sweep, log.subset) for log in run.logs]
        got = [(p.get("seed"), p.get("sweep", {}), p.get("subset")) for p in saved]
        if got != want:
            raise ValueError(f"the checkpoint holds runs {got}, this call asks for {want}")
    for log, p in zip(run.logs, saved, strict=True):
        log.restore(p)


def _begin(run: Run, bar) -> int:
    """Records round 0, or restores the checkpoint when resuming; the round to start from."""
    a = run.args
    if a.resume and a.checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    if not a.resume and a.checkpoint_dir is not None and step_rounds(a.checkpoint_dir):
        raise ValueError(
            f"checkpoint_dir={a.checkpoint_dir} holds the saved state of a run (round "
            f"{step_rounds(a.checkpoint_dir)[0]}); resume=True continues it, and a new run "
            "needs an empty folder (nothing saved is overwritten)"
        )
    placement = None
    if run.mesh is not None:
        placement = (run_sharding(run.mesh) if run.recorder.multi
                     else state_placement(run.state, run.mesh, run.args.data.num_clients))
    onto = placement if distributed.multiprocess() else None  # each process its shards
    restored = load_state(a.checkpoint_dir, run.state, onto) if a.resume else None
    if restored is None:  # a fresh start (or nothing saved yet)
        run.choose_client_map(0)
        return _record_start(run)
    host_state, progress = restored
    _check_identity(run, progress)
    start = int(progress["round"])
    if start > a.rounds:
        raise ValueError(f"the checkpoint is at round {start}, past rounds={a.rounds}")
    _restore(run, progress)
    if onto is not None:  # restored onto the devices already
        run.state = host_state
    elif placement is not None:
        run.state = distributed.put(host_state, placement)
    else:
        run.state = jax.tree.map(jnp.asarray, host_state)
    run.choose_client_map(start, progress.get("client_map"))
    if bar is not None:
        bar.resumed(start)
    return start


def _check_identity(run: Run, progress: dict) -> None:
    """Refuses to resume a saved step of another simulation, listing what differs."""
    saved = progress.get("fingerprint")
    if saved is None:
        raise ValueError(f"the checkpoint in {run.args.checkpoint_dir} has no run fingerprint "
                         "(saved by an older fljax); start a new run")  # fmt: skip
    diff = differences(saved, run.identity)
    if diff:
        listed = ", ".join(f"{k} (saved {saved.get(k)!r}, now {run.identity.get(k)!r})"
                           for k in diff)  # fmt: skip
        raise ValueError(
            f"the checkpoint in {run.args.checkpoint_dir} is of another simulation: {listed}"
            " differ; only rounds (and eval_every, client_map, client_chunk, devices) may "
            "change on resume"
        )


def _checkpoint(run: Run, round_idx: int) -> None:
    """The whole program's state (every run's, stacked) and every run's log, as one step."""
    if run.args.checkpoint_dir is None:
        return
    progress = run.logs[0].progress(round_idx)
    if run.recorder.multi:
        progress = {"round": round_idx, "runs": [log.progress(round_idx) for log in run.logs]}
    progress["client_map"] = run.client_map["strategy"]
    progress["fingerprint"] = run.identity
    save_state(run.args.checkpoint_dir, run.state, progress)  # each process its shards


def _block(run: Run, start: int) -> int:
    """Runs one block of rounds from ``start``; returns the round it ends at."""
    a = run.args
    end = min(start + a.eval_every, a.rounds)
    length = end - start
    round_ids = jnp.arange(start, end, dtype=jnp.int32)
    compiled = run.compiled
    if length not in compiled:
        t0 = time.perf_counter()
        compiled[length] = run.run_block.lower(run.state, run.k_rounds, round_ids,
                                               run.train).compile()  # fmt: skip
        run.compile_s += time.perf_counter() - t0
    run.state, metrics = compiled[length](run.state, run.k_rounds, round_ids, run.train)
    metrics = distributed.to_host(metrics)
    for i, log in enumerate(run.logs):
        run.recorder.absorb(log, _run_of(run, metrics, i), start, length)
        run.recorder.record(end, _run_of(run, run.state, i), _run_of(run, metrics.train_loss, i),
                            log)  # fmt: skip
    _checkpoint(run, end)
    return end


def execute(run: Run) -> list:
    """Runs every block; one :class:`fljax.SimulationResult` per run."""
    from fljax.simulate import SimulationResult

    a, bar = run.args, None
    if a.progress:
        bar = Progress(a.rounds, f"{run.algorithm.name}/{a.data.name}")
    try:
        start = _begin(run, bar)
        while start < a.rounds:
            end = _block(run, start)
            if bar is not None:
                bar.evaluated(start, end, run.logs[-1].history[-1]["metrics"])
            start = end
    except Exception as err:
        lost = distributed.lost(err)
        if lost is None:
            raise
        raise lost from err
    finally:
        if bar is not None:
            bar.close()
    wall_s = time.perf_counter() - run.t_start
    if distributed.multiprocess():  # the result readable in every process (gathered once)
        run.state = distributed.to_host(run.state)
    return [
        SimulationResult(
            params=_run_of(run, run.state, i).params,
            history=log.history,
            state=_run_of(run, run.state, i),
            num_params=num_params(run.params0),
            wall_s=wall_s,
            compile_s=run.compile_s,
            selected=stack_rounds(log.selected, run.width, np.int32),
            contributed=stack_rounds(log.contributed, run.width, bool),
            num_steps=stack_rounds(log.num_steps, run.width, np.int32),
            personal=run.algorithm.personal,
            mode=run.algorithm.mode,
            client_map=run.client_map,
        )
        for i, log in enumerate(run.logs)
    ]
