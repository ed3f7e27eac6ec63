"""Differential privacy mechanisms as transforms, and the per-run accounting plan.

Three levels, each a :class:`Privacy` built by :func:`get`:

- ``"client"`` (central DP, trusted server): DP-FedAvg (McMahan et al. 2018, Algorithm 1 with
  the fixed-denominator estimator ``f_f``): every client's update is clipped to L2 norm ``C``,
  the server adds ``N(0, (z C)^2)`` to their sum and divides by the expected cohort size ``m``.
  Optionally with adaptive clipping (Andrew et al. 2021). One patient-record guarantee for a
  whole hospital: the neighbouring relation is "one client's data added or removed".
- ``"local"``: each client clips and noises its own update before sending (the server is not
  trusted); one client's release is a Gaussian mechanism of sensitivity ``2C``.
- ``"record"``: DP-SGD inside each client (:class:`fljax.client.DPSGD`), accounted per client
  for the records it holds: the guarantee that matters in cross-silo federations where every
  hospital joins every round.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fljax._base import EmptyState, Transform, lookup
from fljax.client import DPSGD, clip_by_norm, gaussian_noise_like
from fljax.privacy import _accounting as acc
from fljax.privacy._secagg import SecAgg, secagg, secagg_plus

LEVELS = ("client", "local", "record")
"""The unit a DP guarantee protects: a client's whole data, a client's update (local DP), or one
record."""


class AdaptiveClipping(NamedTuple):
    """Andrew et al. (2021): geometric update of the clip norm toward a target quantile.

    Attributes:
        target_quantile: ``gamma``, the fraction of updates that should be unclipped.
        clip_lr: ``eta_C`` in ``C <- C exp(-eta_C (b - gamma))``.
        count_noise: ``sigma_b``, std of the noise on the clipped count; ``None`` means
            ``m / 20`` (the paper's default, ``m`` the expected cohort size).
    """

    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise: float | None = None


class Privacy(NamedTuple):
    """A differential privacy configuration; :func:`fljax.simulate` composes it.

    Attributes:
        name: registry name.
        level: ``"client"``, ``"local"`` or ``"record"`` (see the module docstring).
        clip_norm: ``C`` (the initial one with adaptive clipping).
        noise_multiplier: ``z = noise std / C``; ``None`` until calibrated from
            ``target_epsilon``.
        target_epsilon: calibrate ``z`` so the run ends at this epsilon (instead of ``z``).
        delta: the ``delta`` every reported epsilon is computed at.
        sampling: client selection under client-level DP: ``"poisson"`` (each client joins
            with probability ``q = clients_per_round / num_clients``; add/remove relation) or
            ``"fixed"`` (exactly ``clients_per_round`` without replacement; replace-one
            relation, sensitivity ``2C``).
        accountant: ``"rdp"`` or ``"pld"``.
        max_cohort: cap on the Poisson cohort (the padded ``vmap`` width); ``None`` picks the
            smallest cap exceeded with probability at most ``delta / 100`` over the run (with
            the RDP accountant: whose ``delta_cap`` is at most ``delta / 100``).
        adaptive: :class:`AdaptiveClipping` or ``None``.
        hparams: the arguments it was built with.
    """

    name: str
    level: str
    clip_norm: float
    noise_multiplier: float | None
    target_epsilon: float | None
    delta: float
    sampling: str = "poisson"
    accountant: str = "rdp"
    max_cohort: int | None = None
    adaptive: AdaptiveClipping | None = None
    hparams: dict = {}


def _check(clip_norm, noise_multiplier, target_epsilon, delta, sampling, accountant):
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm}")
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError(
            "set exactly one of noise_multiplier and target_epsilon, got "
            f"noise_multiplier={noise_multiplier}, target_epsilon={target_epsilon}"
        )
    acc.validate_budget(
        epsilon=target_epsilon,
        delta=delta,
        noise_multiplier=noise_multiplier,
        accountant=accountant,
        sampling=sampling,
    )


def central_dp(
    clip_norm: float = 1.0,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float = 1e-5,
    sampling: str = "poisson",
    accountant: str = "rdp",
    max_cohort: int | None = None,
) -> Privacy:
    """Client-level DP-FedAvg with a fixed clip norm (McMahan et al. 2018)."""
    _check(clip_norm, noise_multiplier, target_epsilon, delta, sampling, accountant)
    hp = dict(clip_norm=clip_norm, noise_multiplier=noise_multiplier, delta=delta)
    hp.update(target_epsilon=target_epsilon, sampling=sampling, accountant=accountant)
    return Privacy(
        "central_dp",
        "client",
        float(clip_norm),
        noise_multiplier,
        target_epsilon,
        float(delta),
        sampling,
        accountant,
        max_cohort,
        None,
        hp,
    )


def adaptive_dp(
    clip_norm: float = 0.1,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float = 1e-5,
    target_quantile: float = 0.5,
    clip_lr: float = 0.2,
    count_noise: float | None = None,
    sampling: str = "poisson",
    accountant: str = "rdp",
    max_cohort: int | None = None,
) -> Privacy:
    """Client-level DP-FedAvg with adaptive clipping (Andrew et al. 2021, Algorithm 1)."""
    _check(clip_norm, noise_multiplier, target_epsilon, delta, sampling, accountant)
    if not 0 < target_quantile < 1:
        raise ValueError(f"target_quantile must be in (0, 1), got {target_quantile}")
    if clip_lr <= 0:
        raise ValueError(f"clip_lr must be > 0, got {clip_lr}")
    if count_noise is not None and count_noise <= 0:
        raise ValueError(f"count_noise must be > 0, got {count_noise}")
    base = central_dp(
        clip_norm, noise_multiplier, target_epsilon, delta, sampling, accountant, max_cohort
    )
    hp = dict(base.hparams, target_quantile=target_quantile, clip_lr=clip_lr)
    hp["count_noise"] = count_noise
    return base._replace(
        name="adaptive_dp",
        adaptive=AdaptiveClipping(float(target_quantile), float(clip_lr), count_noise),
        hparams=hp,
    )


def _simple(name, level, clip_norm, noise_multiplier, target_epsilon, delta, accountant):
    _check(clip_norm, noise_multiplier, target_epsilon, delta, "poisson", accountant)
    hp = dict(clip_norm=clip_norm, noise_multiplier=noise_multiplier, delta=delta)
    hp.update(target_epsilon=target_epsilon, accountant=accountant)
    return Privacy(
        name, level, float(clip_norm), noise_multiplier, target_epsilon, float(delta),
        accountant=accountant, hparams=hp,
    )  # fmt: skip


def local_dp(
    clip_norm: float = 1.0,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float = 1e-5,
    accountant: str = "rdp",
) -> Privacy:
    """Local DP: every client clips its update to ``C`` and adds ``N(0, (z C)^2)`` itself."""
    return _simple("local_dp", "local", clip_norm, noise_multiplier, target_epsilon, delta,
                   accountant)  # fmt: skip


def dp_sgd(
    clip_norm: float = 1.0,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float = 1e-5,
    accountant: str = "rdp",
) -> Privacy:
    """Sample-level DP-SGD in every client (Abadi et al. 2016), accounted per client."""
    return _simple("dp_sgd", "record", clip_norm, noise_multiplier, target_epsilon, delta,
                   accountant)  # fmt: skip


_REGISTRY = {
    "central_dp": central_dp,
    "adaptive_dp": adaptive_dp,
    "local_dp": local_dp,
    "dp_sgd": dp_sgd,
    "secagg": secagg,
    "secagg_plus": secagg_plus,
}


def names() -> list[str]:
    """Registered privacy mechanisms."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs) -> Privacy | SecAgg:
    """Builds the privacy mechanism ``name`` (see :func:`names`) with ``kwargs``: a
    :class:`Privacy` (``simulate(privacy=...)``) or, for ``secagg`` / ``secagg_plus``, a
    :class:`fljax.privacy.SecAgg` (``simulate(secure_aggregation=...)``).

    Examples:
        >>> p = get("central_dp", clip_norm=0.5, noise_multiplier=1.1, delta=1e-5)
        >>> p.level, p.clip_norm
        ('client', 0.5)
    """
    return lookup("privacy mechanism", _REGISTRY, name, kwargs)(**kwargs)


# ----------------------------------------------------------------------------- transforms


class AdaptiveClipState(NamedTuple):
    """The current clip norm of adaptive clipping (a ``()`` float32)."""

    clip_norm: jax.Array


class ClippedSum(NamedTuple):
    """DP-FedAvg's server step as two parts around the sum of the clipped updates, so that
    the sum itself can be computed elsewhere (secure aggregation sums what ``clip`` returns).

    Attributes:
        clip: ``(updates[K], state, weights[K]) -> (clipped[K], included[K] bool, norms[K])``.
        finish: ``(total, state, key, included, norms) -> (update, state)``: noise, the fixed
            denominator and (adaptive clipping) the new clip norm.
        init: ``params -> state``.
    """

    clip: Callable
    finish: Callable
    init: Callable


def gaussian_sum_parts(
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: float,
    adaptive: AdaptiveClipping | None = None,
) -> ClippedSum:
    """The :class:`ClippedSum` of :func:`gaussian_sum_aggregator` (same arguments)."""
    m = float(expected_clients)
    z_delta, sigma_b = noise_multiplier, None
    if adaptive is not None:
        sigma_b = adaptive.count_noise if adaptive.count_noise is not None else m / 20.0
        z_delta = adaptive_update_noise(noise_multiplier, sigma_b)

    def init(params):
        del params
        if adaptive is None:
            return EmptyState()
        return AdaptiveClipState(jnp.asarray(clip_norm, jnp.float32))

    def clip(updates, state, weights):
        c = clip_norm if adaptive is None else state.clip_norm
        clipped, norms = jax.vmap(lambda d: clip_by_norm(d, c))(updates)
        return clipped, weights > 0, norms

    def finish(total, state, key, included, norms):
        c = clip_norm if adaptive is None else state.clip_norm
        k_noise, k_count = jax.random.split(key)
        noise = gaussian_noise_like(k_noise, total, z_delta * c)
        out = jax.tree.map(lambda t, e: (t + e) / m, total, noise)
        if adaptive is None:
            return out, state
        unclipped = jnp.sum(included.astype(jnp.float32) * (norms <= c))
        b = (unclipped + sigma_b * jax.random.normal(k_count, ())) / m
        new_c = c * jnp.exp(-adaptive.clip_lr * (b - adaptive.target_quantile))
        return out, AdaptiveClipState(new_c.astype(jnp.float32))

    return ClippedSum(clip, finish, init)


SUM_KEY_FOLD = 2  # fold_in(aggregation key, 2): the key of the (secure) sum of clipped updates


def gaussian_sum_aggregator(
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: float,
    adaptive: AdaptiveClipping | None = None,
) -> Transform:
    r"""DP-FedAvg's server step over ``deltas[K, ...]``: the clients with ``weights > 0``.

    .. math:: \Delta = \frac{1}{m}\Big(\sum_k \Delta_k \min(1, C/\|\Delta_k\|) +
              \mathcal N(0, z^2 C^2 I)\Big)

    with ``m = expected_clients`` (McMahan et al. 2018, the fixed-denominator estimator
    :math:`f_f`); each client counts once whatever its size. With ``adaptive`` (Andrew et al.
    2021, Alg. 1) ``C`` is the state: after the step
    :math:`C \leftarrow C \exp(-\eta_C(\tilde b - \gamma))`, where
    :math:`\tilde b = (\sum_k 1[\|\Delta_k\| \le C] + \mathcal N(0, \sigma_b^2)) / m`, and the
    update noise uses :math:`z_\Delta = (z^{-2} - (2\sigma_b)^{-2})^{-1/2}`, so that the pair
    of releases is exactly as private as one Gaussian mechanism with multiplier ``z``
    (their Theorem 1). :func:`gaussian_sum_parts` gives the same step as the two parts
    around the sum (secure aggregation computes the sum in between).
    """
    parts = gaussian_sum_parts(clip_norm, noise_multiplier, expected_clients, adaptive)

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, extra
        if weights is None or key is None:
            raise ValueError("the DP aggregator needs weights[K] and a key")
        clipped, included, norms = parts.clip(updates, state, weights)
        mask = included.astype(jnp.float32)
        total = jax.tree.map(lambda d: jnp.tensordot(mask, d, axes=1), clipped)
        return parts.finish(total, state, key, included, norms)

    return Transform(parts.init, update)


def adaptive_update_noise(noise_multiplier: float, count_noise: float) -> float:
    """Andrew et al. (2021), Thm. 1: ``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``."""
    if 2 * count_noise <= noise_multiplier:
        raise ValueError(
            f"adaptive clipping needs count_noise > noise_multiplier / 2 "
            f"(got count_noise={count_noise}, noise_multiplier={noise_multiplier}); raise "
            "count_noise or the expected cohort size"
        )
    if noise_multiplier == 0:
        return 0.0
    return (noise_multiplier**-2 - (2 * count_noise) ** -2) ** -0.5


def local_gaussian(clip_norm: float, noise_multiplier: float) -> Transform:
    """ONE client's release under local DP: ``clip(delta, C) + N(0, (z C)^2)``."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, weights, extra
        clipped, _ = clip_by_norm(updates, clip_norm)
        noise = gaussian_noise_like(key, clipped, noise_multiplier * clip_norm)
        return jax.tree.map(jnp.add, clipped, noise), state

    return Transform(init, update)


# ----------------------------------------------------------------------------- run plan


def cohort_cap(num_clients: int, rate: float, rounds: float, delta: float) -> int:
    """Smallest cap ``K`` with ``rounds * P[Binomial(num_clients + 1, rate) > K] <= delta/100``.

    ``num_clients + 1`` covers the neighbouring federation with one more client.
    """
    if rate >= 1.0:
        return num_clients
    return binomial_cap(num_clients, num_clients + 1, rate, lambda t: rounds * t <= delta / 100)


def binomial_cap(limit: int, trials: int, rate: float, within) -> int:
    """Smallest ``K`` in ``[0, limit]`` whose tail ``P[Binomial(trials, rate) > K]`` satisfies
    ``within(tail)``; ``limit`` when none does."""
    from scipy.stats import binom

    ks = np.arange(limit + 1)
    ok = within(binom.sf(ks, trials, rate))
    return int(ks[np.argmax(ok)]) if ok.any() else limit


AMPLIFYING_SELECTIONS = ("uniform", "poisson")


def cap_tail(num_clients: int, rate: float, cap: int) -> float:
    """``P[Binomial(num_clients + 1, rate) > cap]``: the chance a round truncates the cohort."""
    from scipy.stats import binom

    return float(binom.sf(cap, num_clients + 1, rate))


class PrivacyPlan(NamedTuple):
    """A :class:`Privacy` resolved for one run (what the round and the accountant need).

    Attributes:
        privacy: the configuration.
        noise_multiplier: ``z`` (calibrated when ``target_epsilon`` was given).
        rate: client sampling rate ``q`` (client level), 1 otherwise.
        expected_clients: ``m``, the fixed denominator (client level).
        cohort: vmapped cohort width (``max_cohort`` under Poisson client sampling).
        population: clients in the federation.
        steps: ``[C]`` local steps per round of each client (record level).
        record_rates: ``[C]`` Poisson rate ``B / n_i`` of each client's records (record level).
        selection: the rule that picks the cohort (client level): ``"uniform"`` or
            ``"poisson"`` are random and amplify privacy; any other rule (``fastest``,
            ``oort``, ...) is accounted conservatively, every client charged as if selected
            every round under replace-one (sensitivity ``2C``).
    """

    privacy: Privacy
    noise_multiplier: float
    rate: float
    expected_clients: float
    cohort: int
    population: int
    steps: tuple = ()
    record_rates: tuple = ()
    selection: str = "uniform"

    @property
    def amplified(self) -> bool:
        """Client sampling is uniformly random, so subsampling amplification applies."""
        return self.selection in AMPLIFYING_SELECTIONS

    @property
    def poisson_clients(self) -> bool:
        return self.privacy.level == "client" and self.privacy.sampling == "poisson"

    def aggregator(self) -> Transform:
        p = self.privacy
        return gaussian_sum_aggregator(
            p.clip_norm, self.noise_multiplier, self.expected_clients, p.adaptive
        )

    def clipped_sum(self) -> ClippedSum:
        """:meth:`aggregator` as the two parts around the sum (for secure aggregation)."""
        p = self.privacy
        return gaussian_sum_parts(p.clip_norm, self.noise_multiplier, self.expected_clients,
                                  p.adaptive)  # fmt: skip

    def client_transform(self) -> Transform:
        return local_gaussian(self.privacy.clip_norm, self.noise_multiplier)

    def dp_sgd(self, batch_size: int) -> DPSGD:
        return DPSGD(self.privacy.clip_norm, self.noise_multiplier, int(batch_size))

    def _client_epsilon(self, z: float, rounds: int) -> tuple[float, float]:
        p = self.privacy
        kwargs = dict(accountant=p.accountant, population=self.population)
        if not self.amplified:  # every client as if selected every round, replace-one
            return acc.epsilon(z / 2, rounds, p.delta, accountant=p.accountant), 0.0
        if self.rate >= 1.0:
            return acc.epsilon(z, rounds, p.delta, accountant=p.accountant), 0.0
        if p.sampling == "fixed":  # replace-one: sensitivity 2C, multiplier z / 2
            eps = acc.epsilon(z / 2, rounds, p.delta, sampling_rate=self.rate, sampling="fixed",
                              **kwargs)  # fmt: skip
            return eps, 0.0
        truncated = self.cohort < self.population
        if p.accountant == "pld" or not truncated:
            cap = self.cohort if truncated else None
            return acc.epsilon(z, rounds, p.delta, sampling_rate=self.rate, cap=cap, **kwargs), 0.0
        # RDP has no truncated-Poisson event: the capped mechanism equals the uncapped one
        # except with probability beta per round, which adds rounds * beta * (1 + e^eps) to delta.
        eps = acc.epsilon(z, rounds, p.delta, sampling_rate=self.rate, accountant="rdp")
        beta = cap_tail(self.population, self.rate, self.cohort)
        return eps, min(1.0, rounds * beta * (1.0 + math.exp(min(eps, 700.0))))

    def _per_client(self, z: float, counts: np.ndarray, record: bool) -> list[float]:
        p = self.privacy
        out = []
        for i, c in enumerate(counts):
            if record:
                out.append(
                    acc.epsilon(
                        z,
                        int(c) * int(self.steps[i]),
                        p.delta,
                        sampling_rate=float(self.record_rates[i]),
                        accountant=p.accountant,
                    )
                )
            else:  # local: any two datasets of a client are neighbours; sensitivity 2C
                out.append(acc.epsilon(z / 2, int(c), p.delta, accountant=p.accountant))
        return out

    def report(
        self, rounds: int, participation: np.ndarray, clip_norm: float | None = None
    ) -> dict[str, Any]:
        """The privacy spent after ``rounds`` rounds, ``participation[C]`` rounds per client."""
        p = self.privacy
        z = self.noise_multiplier
        info: dict[str, Any] = {
            "level": p.level,
            "accountant": p.accountant,
            "delta": p.delta,
            "noise_multiplier": z,
            "clip_norm": p.clip_norm if clip_norm is None else float(clip_norm),
        }
        if p.level == "client":
            eps, delta_cap = self._client_epsilon(z, rounds)
            relation = acc.relation_of(p.sampling) if self.rate < 1 else acc.ADD_REMOVE
            info.update(
                relation=relation if self.amplified else acc.REPLACE_ONE,
                unit="client",
                sampling=p.sampling,
                sampling_rate=self.rate,
                cohort_cap=self.cohort,
                delta_cap=delta_cap,
            )
            if not self.amplified:
                info.update(
                    selection=self.selection,
                    amplification=(
                        f"none: selection {self.selection!r} is not uniformly random, so every "
                        "client is charged as if selected every round (conservative)"
                    ),
                )
        else:
            record = p.level == "record"
            per_client = self._per_client(z, np.asarray(participation), record)
            eps = max(per_client) if per_client else 0.0
            info.update(
                relation=acc.ADD_REMOVE if record else acc.REPLACE_ONE,
                unit="record" if record else "client (local)",
                epsilon_per_client=[float(e) for e in per_client],
            )
        info["epsilon"] = float(eps)
        return info


def plan(
    privacy: Privacy,
    *,
    num_clients: int,
    clients_per_round: int,
    rounds: int,
    steps: np.ndarray | None = None,
    num_examples: np.ndarray | None = None,
    batch_size: int | None = None,
    selection: str = "uniform",
) -> PrivacyPlan:
    """Resolves ``privacy`` for a run: sampling rate, cohort cap and (if asked) calibration.

    ``steps[C]`` and ``num_examples[C]`` (training records per client) and ``batch_size`` are
    needed at record level. Calibration assumes every client joins every round (the worst
    case when clients are sampled) and targets the worst client at record level.
    ``selection``: the rule that picks the cohort at client level; a rule that is not
    uniformly random (not in ``AMPLIFYING_SELECTIONS``) is accounted without amplification.
    """
    if privacy.level == "record":
        return _record_plan(privacy, num_clients, clients_per_round, rounds, steps,
                            num_examples, batch_size)  # fmt: skip
    if privacy.level == "local":
        z = privacy.noise_multiplier
        if z is None:
            z = 2 * acc.calibrate_noise_multiplier(
                privacy.target_epsilon, privacy.delta, rounds, accountant=privacy.accountant
            )
        return PrivacyPlan(privacy, float(z), 1.0, 1.0, clients_per_round, num_clients)
    return _client_plan(privacy, num_clients, clients_per_round, rounds, selection)


def _record_plan(privacy, num_clients, clients_per_round, rounds, steps, num_examples,
                 batch_size) -> PrivacyPlan:  # fmt: skip
    """Record level: each client's Poisson record rate ``B / n_i``; calibration targets the
    worst client."""
    if batch_size is None:
        raise ValueError("dp_sgd needs a local batch_size (the expected Poisson batch)")
    n = np.maximum(np.asarray(num_examples), 1)
    rates = tuple(float(r) for r in np.minimum(1.0, batch_size / n))
    steps_t = tuple(int(s) for s in np.asarray(steps))
    z = privacy.noise_multiplier
    if z is None:  # worst client: calibrate each distinct (rate, steps), keep the largest z
        z = max(
            acc.calibrate_noise_multiplier(
                privacy.target_epsilon,
                privacy.delta,
                rounds * s,
                sampling_rate=r,
                accountant=privacy.accountant,
            )
            for r, s in sorted(set(zip(rates, steps_t, strict=True)))
        )
    return PrivacyPlan(privacy, float(z), 1.0, 1.0, clients_per_round, num_clients, steps_t, rates)


def _client_cohort(privacy, num_clients, clients_per_round, rounds) -> tuple[int, float]:
    """Client level: the ``vmap``ped cohort width and the expected cohort (the denominator)."""
    rate = clients_per_round / num_clients
    if privacy.sampling == "fixed":
        return clients_per_round, float(clients_per_round)
    cohort = privacy.max_cohort or max(
        clients_per_round, cohort_cap(num_clients, rate, rounds, privacy.delta)
    )
    if not clients_per_round <= cohort <= num_clients:
        raise ValueError(
            f"max_cohort must be in [clients_per_round={clients_per_round}, "
            f"num_clients={num_clients}], got {cohort}"
        )
    return cohort, rate * num_clients


def _client_noise(privacy, out: PrivacyPlan, rounds: int) -> float:
    """The noise multiplier: given, or calibrated to ``target_epsilon`` after ``rounds``."""
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    rate, num_clients, cohort = out.rate, out.population, out.cohort
    kwargs = dict(accountant=privacy.accountant, population=num_clients)
    target, delta = privacy.target_epsilon, privacy.delta
    if not out.amplified:
        return 2 * acc.calibrate_noise_multiplier(target, delta, rounds,
                                                  accountant=privacy.accountant)  # fmt: skip
    if rate >= 1.0:
        return acc.calibrate_noise_multiplier(target, delta, rounds,
                                              accountant=privacy.accountant)  # fmt: skip
    if privacy.sampling == "fixed":
        return 2 * acc.calibrate_noise_multiplier(target, delta, rounds, sampling_rate=rate,
                                                  sampling="fixed", **kwargs)  # fmt: skip
    cap = cohort if (privacy.accountant == "pld" and cohort < num_clients) else None
    return acc.calibrate_noise_multiplier(target, delta, rounds, sampling_rate=rate, cap=cap,
                                          **kwargs)  # fmt: skip


def _client_plan(privacy, num_clients, clients_per_round, rounds, selection) -> PrivacyPlan:
    """Client level: sampling rate, cohort cap, calibration, and (RDP, Poisson) a cap wide
    enough that truncating the cohort costs at most ``delta / 100``."""
    rate = clients_per_round / num_clients
    cohort, expected = _client_cohort(privacy, num_clients, clients_per_round, rounds)
    out = PrivacyPlan(privacy, 0.0, rate, expected, int(cohort), num_clients, selection=selection)
    z = _client_noise(privacy, out, rounds)
    if privacy.adaptive is not None:  # fail early on an impossible count noise
        sigma_b = privacy.adaptive.count_noise or expected / 20.0
        adaptive_update_noise(float(z), sigma_b)
    if (
        privacy.sampling == "poisson"
        and privacy.accountant == "rdp"
        and privacy.max_cohort is None
        and rate < 1.0
        and z > 0
    ):
        # Under RDP the cap costs delta_cap = rounds * P[cohort > cap] * (1 + e^eps): widen
        # the cap until that is at most delta / 100 for the epsilon this run will reach.
        eps = acc.epsilon(float(z), rounds, privacy.delta, sampling_rate=rate)
        factor = 1.0 + math.exp(min(eps, 700.0))
        cohort = max(cohort, cohort_cap(num_clients, rate, rounds * factor, privacy.delta))
        out = out._replace(cohort=int(cohort))
    return out._replace(noise_multiplier=float(z))
