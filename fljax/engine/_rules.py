"""What each stage requires, checked in one table before anything compiles.

Every combination rule of the engine is one :class:`Rule` in :data:`RULES`: the feature, what
it requires, a predicate and the reason shown to the user. :func:`check` runs the table over a
run's :class:`Setup` and raises a ``ValueError`` naming the first rule broken. Argument checks
(types and ranges of single arguments) come first in :func:`validate_arguments`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from fljax.algorithms import Algorithm
from fljax.compress import Compressor
from fljax.data import FederatedData
from fljax.models import Model
from fljax.privacy import Privacy, SecAgg
from fljax.privacy._mechanisms import AMPLIFYING_SELECTIONS
from fljax.system import SystemModel

DP_MEAN_ALGORITHMS = ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedprox",
                      "fedbuff")  # fmt: skip
SECAGG_COMPRESSORS = ("selective",)


class Setup(NamedTuple):
    """A run's configuration as the rules see it (``algorithm`` as the user built it)."""

    algorithm: Algorithm
    data: FederatedData
    clients_per_round: int
    stragglers: float
    straggler_policy: str
    compression: Any
    downlink: Any
    privacy: Any
    secagg: Any
    system: Any
    aggregator: Any = None  # a fljax.aggregate.Aggregator replacing the weighted mean
    attack: Any = None  # a fljax.attacks.Attack
    subsets: bool = False  # simulate(subsets=...): each run its own sites

    @property
    def mode(self) -> str:
        return self.algorithm.mode

    @property
    def level(self) -> str | None:
        return None if self.privacy is None else self.privacy.level


class Rule(NamedTuple):
    """``feature`` requires ``holds(setup)`` whenever ``applies(setup)``; else ``reason``."""

    feature: str
    applies: Callable[[Setup], bool]
    holds: Callable[[Setup], bool]
    reason: Callable[[Setup], str]


def _name(s: Setup) -> str:
    return s.algorithm.name


def _selection(s: Setup) -> str:
    return "uniform" if s.system is None else s.system.selection


def _robust(s: Setup) -> bool:
    """A robust aggregator (not the plain weighted mean) replaces the algorithm's."""
    return s.aggregator is not None and s.aggregator.name != "mean"


def _agg(s: Setup) -> str:
    return s.aggregator.name


def _weighted_mean(s: Setup) -> bool:
    from fljax.aggregate._mean import WEIGHTED_MEAN_SUMS

    return s.algorithm.aggregator.linear is WEIGHTED_MEAN_SUMS


RULES: tuple[Rule, ...] = (
    # --- local work
    Rule("stragglers", lambda s: s.stragglers > 0, lambda s: s.mode == "federated",
         lambda s: f"stragglers need mode='federated', not {s.mode!r} (asynchronous "
                   "training takes its delays from the device profiles)"),
    Rule("stragglers", lambda s: s.stragglers > 0 and s.straggler_policy == "partial",
         lambda s: (s.algorithm.local_epochs or max(np.atleast_1d(s.algorithm.local_steps))) >= 2,
         lambda s: "straggler_policy='partial' needs local_epochs >= 2 (or local_steps >= 2): "
                   "stragglers do a uniform 1..E-1 epochs"),
    Rule("mode='cyclic'", lambda s: s.mode == "cyclic",
         lambda s: not (s.algorithm.client_state_init or s.algorithm.server_state_init
                        or s.algorithm.client_finalize),
         lambda s: "mode='cyclic' supports no client or server algorithm state"),
    # --- the client chain
    Rule("compression", lambda s: s.compression is not None,
         lambda s: s.mode in ("federated", "async"),
         lambda s: f"compression needs a mode whose clients send updates ('federated' or "
                   f"'async'), not {s.mode!r}"),
    Rule("downlink", lambda s: s.downlink is not None,
         lambda s: s.mode in ("federated", "async"),
         lambda s: f"downlink compression needs a server that broadcasts a model (mode "
                   f"'federated' or 'async'), not {s.mode!r}"),
    Rule("downlink", lambda s: s.downlink is not None,
         lambda s: not s.downlink.hparams.get("error_feedback"),
         lambda s: "downlink already carries the untransmitted gap x - x_hat over; build the "
                   "downlink compressor with error_feedback=False"),
    # --- privacy
    Rule("privacy", lambda s: s.privacy is not None,
         lambda s: s.algorithm.client_finalize is None,
         lambda s: f"privacy={s.privacy.name!r} cannot protect algorithm {_name(s)!r}: its "
                   "extra per-client upload (control variates, gradient memory) is not "
                   f"privatized; use one of {DP_MEAN_ALGORITHMS}"),
    Rule("privacy", lambda s: s.level == "local", lambda s: s.mode in ("federated", "async"),
         lambda s: f"privacy={s.privacy.name!r} needs clients that send updates "
                   f"(mode 'federated' or 'async'), not {s.mode!r}"),
    Rule("privacy", lambda s: s.level == "client", lambda s: s.mode in ("federated", "async"),
         lambda s: f"privacy={s.privacy.name!r} needs clients that send updates to a server "
                   f"sum (mode 'federated' or FedBuff), not {s.mode!r}"),
    Rule("privacy", lambda s: s.level == "client" and s.mode == "async",
         lambda s: s.privacy.sampling == "fixed",
         lambda s: "client-level DP with FedBuff: the buffer (the first B updates to arrive) is "
                   "the cohort of a server step, not a Poisson sample; set sampling='fixed' "
                   "(accounted conservatively, every client as if in every step)"),
    Rule("privacy", lambda s: s.level == "client",
         lambda s: _name(s) in DP_MEAN_ALGORITHMS,
         lambda s: f"client-level DP replaces the aggregator with a clipped noisy mean, which "
                   f"changes algorithm {_name(s)!r}; use one of {DP_MEAN_ALGORITHMS}"),
    Rule("privacy", lambda s: s.level == "record", lambda s: s.algorithm.batch_size is not None,
         lambda s: "privacy='dp_sgd' needs a minibatch algorithm (batch_size set)"),
    Rule("privacy", lambda s: s.level == "record", lambda s: s.data.task != "survival",
         lambda s: "privacy='dp_sgd' needs a per-example loss; the Cox loss of "
                   "task='survival' couples the records of a batch"),
    Rule("privacy", lambda s: s.level == "client" and s.privacy.sampling == "poisson",
         lambda s: _selection(s) == "uniform",
         lambda s: f"client-level DP with sampling='poisson' selects the cohort itself; the "
                   f"system's selection={_selection(s)!r} would override it. Use "
                   "selection='uniform' (Poisson among all, the unreachable drop out) or "
                   "sampling='fixed' (then the selection rule is accounted as below)"),
    Rule("privacy", lambda s: s.level == "client" and s.privacy.sampling == "fixed",
         lambda s: _selection(s) != "poisson",
         lambda s: "system selection='poisson' with client-level DP: set the privacy "
                   "mechanism's sampling='poisson' instead, so that it is accounted as such"),
    # --- secure aggregation
    Rule("secure_aggregation", lambda s: s.secagg is not None,
         lambda s: s.mode == "federated" or (s.mode == "async"
                                             and s.algorithm.hparams.get("mixing") is None),
         lambda s: f"secure aggregation needs a server sum over a cohort (mode 'federated', or "
                   f"FedBuff's buffer), not {_name(s)!r} in mode {s.mode!r}"),
    Rule("secure_aggregation", lambda s: s.secagg is not None and s.level != "client",
         lambda s: s.algorithm.aggregator.linear is not None,
         lambda s: f"secure aggregation computes sums; the aggregator of {_name(s)!r} is not a "
                   "finish of per-client partial sums (fljax.Linear: the weighted mean, "
                   "FedNova), so the server would need the individual updates"),
    Rule("secure_aggregation", lambda s: s.secagg is not None,
         lambda s: s.algorithm.client_finalize is None and s.algorithm.personal is None,
         lambda s: f"secure aggregation masks the model update only; {_name(s)!r} sends more "
                   "(control variates, gradient memory) or keeps private layers, which the "
                   "protocol would leave in the clear"),
    Rule("secure_aggregation", lambda s: s.secagg is not None and s.compression is not None,
         lambda s: s.compression.name in SECAGG_COMPRESSORS,
         lambda s: f"compression={s.compression.name!r} does not compose with secure "
                   "aggregation: masks make every message a dense ring vector, so sparsifiers "
                   "with client-specific indices (topk, randk) lose their savings, and "
                   "per-client scales or factors (qsgd, sign, powersgd) do not add up in the "
                   f"ring; the ring encoding (bits=) is the quantizer. Composable: "
                   f"{SECAGG_COMPRESSORS}"),
    Rule("secure_aggregation", lambda s: s.secagg is not None and s.compression is not None,
         lambda s: not s.compression.hparams.get("error_feedback"),
         lambda s: "error feedback is not needed with selective sharing; set it off"),
    # --- robust aggregation and attacks
    Rule("aggregator", lambda s: s.aggregator is not None, lambda s: s.mode == "federated",
         lambda s: f"aggregator={_agg(s)!r} reduces a synchronous cohort of updates (mode "
                   f"'federated'), not {_name(s)!r} in mode {s.mode!r}"),
    Rule("aggregator", lambda s: s.aggregator is not None, _weighted_mean,
         lambda s: f"aggregator={_agg(s)!r} replaces the weighted mean, but {_name(s)!r} "
                   "aggregates with its own rule (FedNova's normalised averaging, FedDyn's "
                   "server state), which would be silently dropped"),
    Rule("aggregator", _robust, lambda s: s.secagg is None,
         lambda s: f"aggregator={_agg(s)!r} needs the individual updates, but secure "
                   "aggregation shows the server only their sum; robust rules and SecAgg do "
                   "not compose (use norm bounding at the clients, or drop secure_aggregation)"),
    Rule("aggregator", lambda s: _robust(s) and s.level == "client",
         lambda s: _agg(s) == "centered_clipping",
         lambda s: f"aggregator={_agg(s)!r} with client-level DP: the Gaussian noise is "
                   "calibrated to the clipped SUM (one client moves it by at most clip_norm); "
                   f"{_agg(s)!r} can move by more than clip_norm / m when one client changes "
                   "(a median or a Krum choice jumps), so its noise would be uncalibrated. "
                   "Composable: centered_clipping (one iteration, tau = clip_norm: DP-FedAvg's "
                   "clip centered at the last released aggregate); local DP (local_dp) and "
                   "record-level DP (dp_sgd) compose with every aggregator"),
    Rule("aggregator", lambda s: s.level == "client" and _robust(s)
         and _agg(s) == "centered_clipping",
         lambda s: s.aggregator.hparams["iterations"] == 1
         and s.aggregator.hparams["tau"] == s.privacy.clip_norm,
         lambda s: f"centered_clipping with client-level DP is DP-FedAvg's clipping centered "
                   f"at the last release: it needs iterations=1 (each iteration would use the "
                   f"updates again) and tau equal to the privacy clip_norm={s.privacy.clip_norm}"
                   f", got iterations={s.aggregator.hparams['iterations']}, "
                   f"tau={s.aggregator.hparams['tau']}"),
    Rule("aggregator", lambda s: s.aggregator is not None and s.mode == "federated",
         lambda s: s.aggregator.min_cohort(s.clients_per_round) is None,
         lambda s: s.aggregator.min_cohort(s.clients_per_round)),
    Rule("aggregator", lambda s: s.aggregator is not None and "fltrust" in _agg(s),
         lambda s: not (s.algorithm.client_state_init or s.algorithm.personal
                        or s.algorithm.client_finalize),
         lambda s: f"aggregator='fltrust' trains the server on its root dataset like a client; "
                   f"{_name(s)!r} keeps per-client state (control variates, personal layers) "
                   "the server does not have"),
    Rule("attack", lambda s: s.attack is not None, lambda s: s.mode == "federated",
         lambda s: f"attack={s.attack.name!r} needs clients that send updates to a "
                   f"synchronous round (mode 'federated'), not {_name(s)!r} in mode "
                   f"{s.mode!r}"),
    Rule("attack", lambda s: s.attack is not None and s.attack.poison is not None,
         lambda s: s.data.task == "classification",
         lambda s: f"attack={s.attack.name!r} poisons labels (flips them or sets a backdoor "
                   f"target) and needs task='classification', not {s.data.task!r}"),
    # --- counterfactual federations (site subsets on the runs axis)
    Rule("subsets", lambda s: s.subsets, lambda s: s.mode == "federated",
         lambda s: f"subsets need synchronous rounds (mode 'federated') whose cohort is drawn "
                   f"among each run's sites, not {_name(s)!r} in mode {s.mode!r}"),
    Rule("subsets", lambda s: s.subsets, lambda s: s.system is None,
         lambda s: "subsets select uniformly among each run's sites; a system model's "
                   "availability and selection rules do not know the run's sites: leave "
                   "system unset"),
    Rule("subsets", lambda s: s.subsets, lambda s: s.level != "client",
         lambda s: "subsets with client-level DP: the accountant's sampling rate and the "
                   "noise calibration follow the whole federation's size, not each reduced "
                   "federation's, so the epsilon reported would be wrong for a subset. Run "
                   "each subset separately (local DP and record-level DP-SGD compose)"),
    Rule("subsets", lambda s: s.subsets, lambda s: s.secagg is None,
         lambda s: "subsets with secure aggregation: the simulated protocol's cohort and "
                   "dropout recovery are those of the whole federation; run subsets without "
                   "secure_aggregation (it does not change the aggregate)"),
    Rule("subsets", lambda s: s.subsets,
         lambda s: s.aggregator is None and s.attack is None,
         lambda s: "subsets with a robust aggregator or an attack: those rules see every "
                   "cohort slot, including the excluded sites' empty ones; value sites "
                   "without them"),
    # --- system heterogeneity and asynchrony
    Rule("mode='async'", lambda s: s.mode == "async", lambda s: s.system is not None,
         lambda s: f"{_name(s)!r} is asynchronous: give system= (fljax.system.system("
                   "profiles)); the device profiles decide which clients finish first"),
    Rule("mode='async'", lambda s: s.mode == "async",
         lambda s: s.algorithm.hparams["concurrency"] <= s.data.num_clients,
         lambda s: f"concurrency={s.algorithm.hparams['concurrency']} exceeds the "
                   f"federation's {s.data.num_clients} clients"),
    Rule("system", lambda s: s.system is not None, lambda s: s.mode in ("federated", "async"),
         lambda s: f"system= needs mode='federated' or 'async', not {s.mode!r}"),
    Rule("system", lambda s: s.system is not None,
         lambda s: len(s.system.profiles.speed) == s.data.num_clients,
         lambda s: f"system profiles describe {len(s.system.profiles.speed)} clients but the "
                   f"federation has {s.data.num_clients}"),
    Rule("system", lambda s: s.system is not None and s.system.candidates is not None,
         lambda s: s.clients_per_round <= s.system.candidates <= s.data.num_clients,
         lambda s: f"candidates must be in [clients_per_round={s.clients_per_round}, "
                   f"num_clients={s.data.num_clients}], got {s.system.candidates}"),
)  # fmt: skip
"""The requirement table: every check a configuration must pass before compiling, with the reason
shown when it fails."""


def check(setup: Setup) -> None:
    """Raises ``ValueError`` with the reason of the first rule of :data:`RULES` broken."""
    for rule in RULES:
        if rule.applies(setup) and not rule.holds(setup):
            raise ValueError(rule.reason(setup))


def amplified_selection(setup: Setup) -> str:
    """The selection rule the client-level accountant is told about."""
    if setup.mode == "async":  # the buffer: whoever finishes first
        return "arrival_order"
    if setup.privacy is not None and setup.privacy.sampling == "poisson":
        return "poisson"
    rule = _selection(setup)
    return rule if rule not in AMPLIFYING_SELECTIONS else "uniform"


def validate_arguments(algorithm, model, data, rounds, clients_per_round, eval_every, seed,
                       stragglers, straggler_policy) -> None:  # fmt: skip
    """Type and range checks of single arguments of :func:`fljax.simulate`."""
    from fljax.engine._clock import STRAGGLER_POLICIES

    for name, value, kind in (("algorithm", algorithm, Algorithm), ("model", model, Model),
                              ("data", data, FederatedData)):  # fmt: skip
        if not isinstance(value, kind):
            raise ValueError(f"{name} must be an fljax {kind.__name__}, got "
                             f"{type(value).__name__}")  # fmt: skip
    for name, value in (("rounds", rounds), ("eval_every", eval_every)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if algorithm.mode != "centralized" and (
        not isinstance(clients_per_round, int | np.integer)
        or not (1 <= clients_per_round <= data.num_clients)
    ):
        raise ValueError(
            f"clients_per_round must be an integer in [1, num_clients={data.num_clients}], "
            f"got {clients_per_round!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not -(2**63) <= int(seed) < 2**63:
        raise ValueError(f"seed must fit in a signed 64-bit integer (|seed| < 2**63), got "
                         f"{seed}")  # fmt: skip
    if int(data.test.num_examples.sum()) == 0:
        raise ValueError("the federation has no test examples (test_fraction=0?)")
    empty = np.flatnonzero(np.asarray(data.train.num_examples) == 0)
    if empty.size and algorithm.mode != "centralized":
        names = ", ".join(f"{i} ({data.client_names[i]})" for i in empty[:10])
        raise ValueError(
            f"data: client(s) {names} have no training examples; selected, they would count "
            "as participants and in bytes and dilute uniform weighting while training nothing. "
            "Drop them with fljax.data.drop_empty_clients(data) (fljax-run: "
            "empty_clients=drop)"
        )
    if isinstance(algorithm.local_steps, tuple):
        if algorithm.mode == "centralized":
            raise ValueError("per-client local_steps make no sense for centralized training")
        if len(algorithm.local_steps) != data.num_clients:
            raise ValueError(
                f"local_steps has {len(algorithm.local_steps)} entries but the federation has "
                f"{data.num_clients} clients"
            )
    if not 0.0 <= stragglers < 1.0:
        raise ValueError(f"stragglers must be a fraction in [0, 1), got {stragglers}")
    if straggler_policy not in STRAGGLER_POLICIES:
        raise ValueError(
            f"straggler_policy={straggler_policy!r} is not one of {STRAGGLER_POLICIES}"
        )


def validate_components(compression, downlink, privacy, secagg, system, client_chunk,
                        client_map="vmap", aggregator=None, attack=None,
                        reject_norm=None) -> None:  # fmt: skip
    """Each optional component is of the kind its argument expects."""
    from fljax.aggregate import Aggregator
    from fljax.attacks import Attack

    for name, value, kind, where in (("aggregator", aggregator, Aggregator, "aggregate"),
                                     ("attack", attack, Attack, "attacks")):  # fmt: skip
        if value is not None and not isinstance(value, kind):
            raise ValueError(f"{name} must be a fljax {kind.__name__} (fljax.{where}.get(...)), "
                             f"got {value!r}")  # fmt: skip
    if reject_norm is not None and (
        isinstance(reject_norm, bool) or not isinstance(reject_norm, int | float)
        or not 0 < reject_norm < float("inf")
    ):
        raise ValueError(f"reject_norm must be a positive finite number or None, got "
                         f"{reject_norm!r}")  # fmt: skip
    for name, value, kind in (("compression", compression, Compressor),
                              ("downlink", downlink, Compressor), ("privacy", privacy, Privacy),
                              ("secure_aggregation", secagg, SecAgg),
                              ("system", system, SystemModel)):  # fmt: skip
        if value is not None and not isinstance(value, kind):
            raise ValueError(f"{name} must be a fljax {kind.__name__}, got {value!r}")
    if client_chunk is not None and (
        isinstance(client_chunk, bool) or not isinstance(client_chunk, int) or client_chunk < 1
    ):
        raise ValueError(f"client_chunk must be a positive integer or None, got {client_chunk!r}")
    from fljax.engine._map import CLIENT_MAPS

    if client_map not in (*CLIENT_MAPS, "auto"):
        raise ValueError(f"client_map={client_map!r} is not one of {(*CLIENT_MAPS, 'auto')}")
    if client_map == "sequential" and client_chunk is not None:
        raise ValueError("client_chunk chunks a vmap; client_map='sequential' runs one client "
                         "at a time already: leave client_chunk unset")  # fmt: skip
