"""Privacy accounting with Google's ``dp-accounting`` package (RDP and PLD accountants).

Every mechanism in :mod:`fljax.privacy` is one repeated DP event: a (sub)sampled Gaussian with
noise multiplier ``z = noise std / sensitivity``. This module builds the ``dp_accounting``
event for it, composes it over the rounds (or local steps) run so far, and converts to
``epsilon`` at a given ``delta``. Each result names its neighbouring relation and accountant.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dp_accounting

ACCOUNTANTS = ("rdp", "pld")
"""The privacy accountants of dp-accounting fljax uses: Renyi DP or privacy loss distributions."""
SAMPLINGS = ("poisson", "fixed")
ADD_REMOVE = "add_remove"
REPLACE_ONE = "replace_one"


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def validate_budget(
    *,
    epsilon: float | None = None,
    delta: float | None = None,
    sampling_rate: float | None = None,
    noise_multiplier: float | None = None,
    accountant: str | None = None,
    sampling: str | None = None,
) -> None:
    """Raises ``ValueError`` naming the first impossible privacy setting among those given."""
    if epsilon is not None and not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
    if delta is not None and not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if sampling_rate is not None and not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling rate q must be in (0, 1], got {sampling_rate}")
    if noise_multiplier is not None and not (
        noise_multiplier >= 0 and math.isfinite(noise_multiplier)
    ):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")
    if accountant is not None and accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant={accountant!r} is not one of {ACCOUNTANTS}")
    if sampling is not None and sampling not in SAMPLINGS:
        raise ValueError(f"sampling={sampling!r} is not one of {SAMPLINGS}")


def dp_event(
    noise_multiplier: float,
    count: int,
    *,
    sampling_rate: float = 1.0,
    sampling: str = "poisson",
    population: int | None = None,
    cap: int | None = None,
) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of ``count`` repetitions of a sampled Gaussian mechanism.

    - ``"poisson"``: each unit (client or record) is included independently with probability
      ``sampling_rate`` (add/remove-one relation). With a ``cap`` below ``population`` the
      sample is truncated to ``cap`` random units: ``TruncatedSubsampledGaussianDpEvent``.
    - ``"fixed"``: a uniform subset of ``round(sampling_rate * population)`` units without
      replacement, replace-one relation (RDP only, Wang et al. 2019). The caller passes the
      multiplier relative to the replace-one sensitivity (``z / 2`` for clipped sums).

    ``sampling_rate = 1`` is the plain Gaussian mechanism composed ``count`` times.
    """
    import dp_accounting  # on first use: it loads SciPy's signal and stats (~1.5 s)

    validate_budget(sampling_rate=sampling_rate, noise_multiplier=noise_multiplier)
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate == 1.0:
        one = gaussian
    elif sampling == "fixed":
        if population is None:
            raise ValueError("fixed-size sampling needs population (the number of units)")
        size = int(round(sampling_rate * population))
        one = dp_accounting.SampledWithoutReplacementDpEvent(population, size, gaussian)
    elif cap is not None and population is not None and cap < population:
        one = dp_accounting.TruncatedSubsampledGaussianDpEvent(
            population, sampling_rate, cap, noise_multiplier
        )
    else:
        one = dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)
    return dp_accounting.SelfComposedDpEvent(one, int(count))


def _accountant(accountant: str, relation: str):
    import dp_accounting
    from dp_accounting import pld, rdp

    rel = (
        dp_accounting.NeighboringRelation.REPLACE_ONE
        if relation == REPLACE_ONE
        else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    if accountant == "rdp":
        return rdp.RdpAccountant(neighboring_relation=rel)
    return pld.PLDAccountant(neighboring_relation=rel)


def relation_of(sampling: str) -> str:
    """The neighbouring relation under which ``sampling`` is accounted."""
    return REPLACE_ONE if sampling == "fixed" else ADD_REMOVE


@functools.lru_cache(maxsize=4096)
def epsilon(
    noise_multiplier: float,
    count: int,
    delta: float,
    *,
    sampling_rate: float = 1.0,
    sampling: str = "poisson",
    population: int | None = None,
    cap: int | None = None,
    accountant: str = "rdp",
) -> float:
    """Epsilon at ``delta`` after ``count`` repetitions of the sampled Gaussian mechanism.

    Uses ``dp_accounting``'s RDP accountant (Mironov 2017; sampled Gaussian of Mironov, Talwar
    and Zhang 2019) or PLD accountant (Doroshenko et al. 2022). ``inf`` when
    ``noise_multiplier == 0``; ``0`` when ``count == 0``.

    Examples:
        >>> round(epsilon(1.1, 10_000, 1e-5, sampling_rate=0.01, accountant="rdp"), 3)
        5.632
    """
    validate_budget(
        delta=delta,
        sampling_rate=sampling_rate,
        noise_multiplier=noise_multiplier,
        accountant=accountant,
        sampling=sampling,
    )
    if count == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if sampling == "fixed" and sampling_rate < 1 and accountant != "rdp":
        raise ValueError(
            "fixed-size sampling (replace-one relation) is accounted by accountant='rdp' only"
        )
    acc = _accountant(accountant, relation_of(sampling) if sampling_rate < 1 else ADD_REMOVE)
    event = dp_event(
        noise_multiplier,
        count,
        sampling_rate=sampling_rate,
        sampling=sampling,
        population=population,
        cap=cap,
    )
    with _quiet_absl():  # RDP drops fractional orders whose series do not converge; still valid
        acc.compose(event)
        return float(acc.get_epsilon(delta))


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    count: int,
    *,
    sampling_rate: float = 1.0,
    sampling: str = "poisson",
    population: int | None = None,
    cap: int | None = None,
    accountant: str = "rdp",
    tol: float = 1e-3,
) -> float:
    """The smallest noise multiplier whose epsilon after ``count`` repetitions is at most
    ``target_epsilon`` (within ``tol`` in ``z``), by Brent's method over ``dp_accounting``.

    Examples:
        >>> z = calibrate_noise_multiplier(5.632, 1e-5, 10_000, sampling_rate=0.01)
        >>> round(z, 2)
        1.1
    """
    import dp_accounting

    validate_budget(
        epsilon=target_epsilon,
        delta=delta,
        sampling_rate=sampling_rate,
        accountant=accountant,
        sampling=sampling,
    )
    if count < 1:
        raise ValueError(f"count (rounds or steps) must be >= 1, got {count}")
    kwargs = dict(sampling_rate=sampling_rate, sampling=sampling, population=population, cap=cap)
    relation = relation_of(sampling) if sampling_rate < 1 else ADD_REMOVE
    if accountant == "pld":
        # PLD discretizations of tiny multipliers are huge: bracket with the (looser) RDP
        # answer first. eps_PLD <= eps_RDP, so the PLD multiplier lies below z_RDP.
        rdp_kwargs = dict(kwargs, cap=None)
        hi = calibrate_noise_multiplier(
            target_epsilon, delta, count, accountant="rdp", tol=tol, **rdp_kwargs
        )
        lo = hi / 2
        while lo > 1e-2 and epsilon(lo, count, delta, accountant="pld", **kwargs) <= target_epsilon:
            lo /= 2
        bracket = dp_accounting.ExplicitBracketInterval(lo, hi)
    else:
        bracket = dp_accounting.LowerEndpointAndGuess(1e-3, 1.0)
    with _quiet_absl():
        z = dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant, relation),
            lambda z: dp_event(z, count, **kwargs),
            target_epsilon,
            delta,
            bracket_interval=bracket,
            tol=tol,
        )
    reached = epsilon(z, count, delta, accountant=accountant, **kwargs)
    if reached <= 0.0:
        raise ValueError(
            f"target_epsilon={target_epsilon:g} is out of reach at delta={delta:g} over {count} "
            f"rounds/steps: the {accountant} accountant's bound hits 0 (delta alone covers the "
            f"mechanism) at noise_multiplier ~{z:.3g}: calibration lands where the bound "
            "vanishes, not at the target, and such noise drowns every update. Choose a larger "
            "target_epsilon (the usual range is 0.1 to 10) or a smaller delta"
        )
    return float(z)
