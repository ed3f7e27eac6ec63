"""The host side of a run: what each run keeps between blocks (:class:`RunLog`), the host
bookkeeping of a block's :class:`RoundMetrics` (participation, bytes, protocol counters) and
the history entry written at each evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fljax import distributed
from fljax.engine._state import NonFiniteUpdateError, RoundMetrics
from fljax.metrics import HIGHER_IS_BETTER, summarize
from fljax.privacy import graph_degree
from fljax.privacy._secagg import SHARE_BYTES

SECAGG_COUNTERS = ("prg_client", "prg_server", "recovered_pairs", "recovery_messages", "dropped",
                   "clipped")  # fmt: skip


@dataclasses.dataclass
class RunLog:
    """What the host keeps for one run between blocks: history, selections, counters."""

    seed: int
    num_clients: int
    sweep: dict = dataclasses.field(default_factory=dict)  # this run's swept values
    subset: list | None = None  # this run's sites (simulate(subsets=)); None: every site
    history: list = dataclasses.field(default_factory=list)
    selected: list = dataclasses.field(default_factory=list)
    contributed: list = dataclasses.field(default_factory=list)
    num_steps: list = dataclasses.field(default_factory=list)
    participation: np.ndarray = None
    totals: dict = None
    block: dict = dataclasses.field(default_factory=dict)  # this block's per-round records

    def __post_init__(self):
        self.participation = np.zeros(self.num_clients, np.int64)
        self.totals = {
            "up": 0, "down": 0, "async_updates": 0, "async_discarded": 0,
            "async_staleness": 0, "async_staleness_max": 0,
            "secagg": dict.fromkeys(SECAGG_COUNTERS, 0),
            "rejected": [0] * self.num_clients, "kept": [0] * self.num_clients,
        }  # fmt: skip

    def progress(self, round_idx: int) -> dict:
        """The log as saved with a checkpoint at ``round_idx``."""
        return {
            "round": round_idx,
            "seed": self.seed,
            "sweep": self.sweep,
            "subset": self.subset,
            "history": self.history,
            "selected": [a.tolist() for a in self.selected],
            "contributed": [a.tolist() for a in self.contributed],
            "num_steps": [a.tolist() for a in self.num_steps],
            "totals": self.totals,
        }

    def restore(self, progress: dict) -> None:
        """The log as it was at a checkpoint (:meth:`progress`)."""
        self.history.extend(progress["history"])
        self.selected.extend(np.asarray(a, np.int32) for a in progress["selected"])
        self.contributed.extend(np.asarray(a, bool) for a in progress["contributed"])
        self.num_steps.extend(np.asarray(a, np.int32) for a in progress["num_steps"])
        self.totals.update(progress["totals"])
        self.participation[:] = self.history[-1]["client_metrics"]["participation"]


def json_list(values: np.ndarray) -> list:
    """Per-client values for JSON: undefined (NaN) entries become ``None``."""
    return [float(v) if np.isfinite(v) else None for v in values]


def _ids_where(ids: np.ndarray, flags: np.ndarray) -> list:
    """Per round of a block, the client ids whose flag is set (ascending)."""
    return [sorted(int(c) for c in i[f]) for i, f in zip(ids.reshape(flags.shape), flags,
                                                           strict=True)]  # fmt: skip


def _tally(log: RunLog, name: str, ids: np.ndarray, flags: np.ndarray) -> None:
    """Adds the flagged clients of a block to ``log.totals[name]`` (per client) and lists them
    per round in ``log.block[name]``."""
    per_client = np.asarray(log.totals[name], np.int64)
    np.add.at(per_client, ids[flags], 1)
    log.totals[name] = per_client.tolist()
    log.block[name] = _ids_where(ids, flags)


def stack_rounds(blocks: list, k: int, dtype) -> np.ndarray:
    """Per-block ``[L, K]`` records as one ``[rounds, K]`` array (``[0, K]`` when none)."""
    if not blocks:
        return np.zeros((0, k), dtype)
    return np.concatenate([np.asarray(b, dtype).reshape(-1, k) for b in blocks], axis=0)


@dataclasses.dataclass
class Recorder:
    """Turns a run's state and logs into history entries and host totals.

    Attributes:
        mode: the algorithm's mode; ``wire``: the run's :class:`fljax.engine._setup.Wire`.
        splits: ``(prefix, compiled scorer, split data, counts)`` evaluated each time.
        eval_params: ``state -> the params to evaluate`` (per-client for personal models).
        evaluate_global: scorer of the global model beside personalized ones, or ``None``.
        test, test_counts: the test split for ``evaluate_global``.
        extras: ``(entry, state, log) -> None`` hooks adding component records.
    """

    mode: str
    wire: Any
    splits: list
    eval_params: Callable
    evaluate_global: Any
    test: Any
    test_counts: np.ndarray
    multi: bool
    secagg: Any = None
    callbacks: Sequence[Callable[[dict], None]] = ()
    extras: list = dataclasses.field(default_factory=list)

    def _scores(self, scorer, params, split, counts, prefix, metrics, client_metrics):
        for name, values in distributed.to_host(scorer(params, *split)).items():
            values = np.asarray(values, np.float64)[: len(counts)]  # drop mesh padding
            client_metrics[f"{prefix}{name}"] = json_list(values)
            for suffix, v in summarize(values, counts, HIGHER_IS_BETTER[name]).items():
                metrics[f"{prefix.removeprefix('global_')}{name}{suffix}"] = v

    def record(self, round_idx: int, state, train_losses, log: RunLog) -> dict:
        """The history entry at ``round_idx``, appended to ``log`` and sent to callbacks."""
        metrics, client_metrics = {}, {}
        for prefix, scorer, split, counts in self.splits:
            self._scores(scorer, self.eval_params(state), split, counts, f"{prefix}_", metrics,
                         client_metrics)  # fmt: skip
        metrics["local_loss"] = float(np.mean(train_losses)) if train_losses is not None else None
        global_metrics = None
        if self.evaluate_global is not None:
            global_metrics = {}
            self._scores(self.evaluate_global, state.params, self.test, self.test_counts,
                         "global_test_", global_metrics, client_metrics)  # fmt: skip
        client_metrics["num_test_examples"] = self.test_counts.tolist()
        client_metrics["participation"] = log.participation.tolist()
        entry = {
            "round": round_idx,
            "metrics": metrics,
            "client_metrics": client_metrics,
            "bytes_up": int(log.totals["up"]),
            "bytes_down": int(log.totals["down"]),
        }
        if global_metrics is not None:
            entry["global_metrics"] = global_metrics
        for extra in self.extras:
            extra(entry, state, log, round_idx)
        if self.multi:
            entry["seed"] = log.seed
        if log.sweep:
            entry["sweep"] = log.sweep
        if log.subset is not None:
            entry["subset"] = log.subset
        log.history.append(entry)
        for cb in self.callbacks:
            cb(entry)
        return entry

    def absorb(self, log: RunLog, metrics: RoundMetrics, start: int, length: int) -> None:
        """Host bookkeeping of one run's block: who took part, bytes, protocol counters."""
        if not np.all(metrics.finite):
            bad = start + int(np.argmin(metrics.finite)) + 1
            which = f"seed {log.seed}, " if self.multi else ""
            raise NonFiniteUpdateError(
                f"{which}round {bad}: the aggregated update is not finite (NaN or inf); lower "
                f"the learning rates or clip updates. Metrics up to round {start} were kept."
            )
        ids = np.asarray(metrics.client_ids)
        took_part = np.asarray(metrics.contributed)
        sent = took_part  # whose message reached the server
        log.block = {}
        if not isinstance(metrics.rejected, tuple):  # fault isolation (synchronous rounds)
            rejected = np.asarray(metrics.rejected, bool).reshape(ids.shape)
            useless = rejected.any(axis=1) & ~took_part.any(axis=1)
            if np.any(useless):  # a round where every update sent was rejected
                bad = start + int(np.argmax(useless)) + 1
                which = f"seed {log.seed}, " if self.multi else ""
                raise NonFiniteUpdateError(
                    f"{which}round {bad}: every client update was rejected (non-finite, or "
                    f"longer than reject_norm): nothing to aggregate; lower the learning rates "
                    f"or raise reject_norm. Metrics up to round {start} were kept."
                )
            sent = took_part | rejected
            _tally(log, "rejected", ids, rejected)
        if not isinstance(metrics.kept, tuple):  # a selection-based robust aggregator
            _tally(log, "kept", ids, np.asarray(metrics.kept, bool).reshape(ids.shape))
        log.selected.append(ids)
        log.contributed.append(took_part)
        log.num_steps.append(np.asarray(metrics.num_steps))
        totals, wire = log.totals, self.wire
        if self.mode != "centralized":
            np.add.at(log.participation, ids[took_part], 1)
        if self.secagg is None:
            totals["up"] += int(sent.sum()) * wire.up
        else:  # every selected client keys and shares; survivors send the masked vector
            st = metrics.secagg
            for name in totals["secagg"]:
                totals["secagg"][name] += int(np.sum(st._asdict()[name]))
            log.block["clipped"] = np.asarray(st.clipped).reshape(length, -1).sum(1).tolist()
            b = wire.secagg
            totals["up"] += (
                int(ids.size) * (b["advertise_keys"] + b["share_keys"])
                + int(np.sum(st.survivors)) * b["masked_input"]
                + int(np.sum(st.recovery_messages)) * SHARE_BYTES
            )
        totals["down"] += int(np.sum(metrics.sampled)) * wire.down + length * wire.broadcast
        if self.mode == "async":
            tau = np.asarray(metrics.staleness)
            totals["async_updates"] += int(took_part.sum())
            totals["async_discarded"] += int((~took_part).sum())
            totals["async_staleness"] += int(tau[took_part].sum())
            totals["async_staleness_max"] = max(
                totals["async_staleness_max"], int(tau.max(initial=0))
            )


def robust_records(aggregator, attack, malicious, clean, model, mode) -> list:
    """The hooks recording fault isolation (``rejected``: clients dropped in each round of the
    block and per-client totals), the robust aggregator (``robust``: the clients a selection
    rule kept) and the attack (``attack``: its malicious clients; a backdoor's success rate in
    ``metrics["backdoor_success"]``)."""
    extras = []
    if mode == "federated":

        def rejected_record(e, st, log, r):
            per_client = log.totals["rejected"]
            e["rejected"] = {"total": int(sum(per_client)), "per_client": list(per_client),
                             "rounds": log.block.get("rejected", [])}  # fmt: skip

        extras.append(rejected_record)
    bad = None if malicious is None else set(np.flatnonzero(malicious).tolist())
    if aggregator is not None:

        def robust_record(e, st, log, r):
            rec = {"aggregator": aggregator.name, **aggregator.hparams}
            if aggregator.selects:
                rec["kept"] = log.block.get("kept", [])
                rec["kept_per_client"] = list(log.totals["kept"])
                if bad is not None:
                    rec["kept_malicious"] = int(sum(log.totals["kept"][i] for i in bad))
            e["robust"] = rec

        extras.append(robust_record)
    if attack is not None:
        asr = None
        if attack.trigger is not None:
            asr = backdoor_scorer(attack, clean, model)

        def attack_record(e, st, log, r):
            e["attack"] = {"name": attack.name, "malicious": sorted(bad), **attack.hparams}
            if asr is not None:
                e["metrics"]["backdoor_success"] = float(jax.device_get(asr(st.params)))

        extras.append(attack_record)
    return extras


def backdoor_scorer(attack, clean, model):
    """``params -> ()``: the fraction of triggered test inputs whose label is not the target
    that the model classifies as the target (the backdoor's attack success rate)."""
    clean.whole("the backdoor's attack success rate")
    test = type(clean.test)(*(np.asarray(a) for a in clean.test))
    real = test.mask & (test.y != attack.target)
    xs = jnp.asarray(attack.trigger(test.x[real], clean))

    @jax.jit
    def score(params):
        pred = jnp.argmax(model.apply(params, xs), axis=-1)
        return jnp.mean((pred == attack.target).astype(jnp.float32))

    return score


def adaptive_clip_norm(aggregator_state):
    """The current clip norm of adaptive clipping, also when wrapped by secure aggregation."""
    return getattr(aggregator_state, "inner", aggregator_state).clip_norm


def component_records(compression, wire, params, system, mode, secagg, width, dp_plan) -> list:
    """The hooks ``(entry, state, log, round) -> None`` adding each component's record
    (compression ratio, simulated time, async staleness, SecAgg counters, privacy spent)."""
    extras = []
    if compression is not None:
        ratio = 8 * wire.model / compression.bits(params)
        extras.append(lambda e, st, log, r: e.__setitem__("compression_ratio", ratio))
    if system is not None:
        extras.append(
            lambda e, st, log, r: e.__setitem__(
                "sim_time_s", float(jax.device_get(st.system_state.now))
            )
        )
    if mode == "async":

        def async_record(e, st, log, r):
            t = log.totals
            done = max(t["async_updates"], 1)
            e["async"] = {"updates": t["async_updates"], "discarded_stale": t["async_discarded"],
                          "staleness_mean": t["async_staleness"] / done,
                          "staleness_max": t["async_staleness_max"]}  # fmt: skip

        extras.append(async_record)
    if secagg is not None:

        def secagg_record(e, st, log, r):
            e["secagg"] = {"protocol": secagg.name, "bits": secagg.bits,
                           "degree": graph_degree(secagg, width), **log.totals["secagg"],
                           "clipped_per_round": log.block.get("clipped", []),
                           "bytes_per_client": wire.secagg}  # fmt: skip

        extras.append(secagg_record)
    if dp_plan is not None:

        def privacy_record(e, st, log, r):
            counts = np.array([r]) if mode == "centralized" else log.participation
            clip = None
            if dp_plan.privacy.adaptive is not None:
                clip = float(jax.device_get(adaptive_clip_norm(st.aggregator_state)))
            e["privacy"] = dp_plan.report(r, counts, clip)
            e["epsilon"] = e["privacy"]["epsilon"]

        extras.append(privacy_record)
    return extras
