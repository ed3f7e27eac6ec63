"""System heterogeneity: per-client device profiles, a simulated clock and deadlines.

A client's time in a synchronous round is

    t_i = down_bytes / downlink_i + examples_i / speed_i + up_bytes / uplink_i

(download the model, train on ``examples_i = steps_i * min(B, n_i)`` examples, upload the
update; bytes from the engine's exact message sizes, compression included). The round lasts
until the slowest contributing client is done, or until the deadline when one is set. Each
round every client is available with its own probability; an unavailable selected client
contributes nothing.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEADLINE_POLICIES = ("drop", "partial")
"""What happens to a client that misses the deadline: its update is dropped, or it sends the
local steps that fit."""
SELECTIONS = ("uniform", "poisson", "available", "fastest", "feasible", "power_of_choice", "oort")
"""The client selection rules ``system(selection=...)`` accepts."""


class DeviceProfiles(NamedTuple):
    """Per-client device characteristics, arrays ``[C]`` (float32).

    Attributes:
        speed: training throughput, examples per second.
        uplink: upload bandwidth, bytes per second.
        downlink: download bandwidth, bytes per second.
        availability: probability that the client is reachable in a given round.
        phase: the client's local time-zone offset as a fraction of a day (for diurnal
            availability); ``None`` means 0 for every client.
    """

    speed: np.ndarray
    uplink: np.ndarray
    downlink: np.ndarray
    availability: np.ndarray
    phase: np.ndarray | None = None


def profiles(
    num_clients: int,
    kind: str = "hospital",
    seed: int = 0,
    speed: float = 1_000.0,
    uplink: float = 1e6,
    downlink: float = 1e7,
    availability: float = 1.0,
    sigma: float = 1.0,
) -> DeviceProfiles:
    """Samples device profiles for ``num_clients`` clients from one seed.

    - ``"uniform"``: every client has exactly ``speed``, ``uplink``, ``downlink`` and
      ``availability``.
    - ``"hospital"``: a skewed federation: speed and both bandwidths are the given medians times
      independent ``LogNormal(0, sigma^2)`` factors (a few sites are an order of magnitude
      slower, as with a hospital behind a slow VPN or on shared CPUs); availability per client
      is ``Beta(a, 1)`` scaled so that its mean is ``availability`` (``1.0``: always there).
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    for name, v in (("speed", speed), ("uplink", uplink), ("downlink", downlink)):
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number > 0, got {v}")
    if not 0 < availability <= 1:
        raise ValueError(f"availability must be in (0, 1], got {availability}")
    ones = np.ones(num_clients, np.float32)
    if kind == "uniform":
        return DeviceProfiles(
            speed * ones, uplink * ones, downlink * ones, availability * ones, 0 * ones
        )
    if kind != "hospital":
        raise ValueError(f"kind={kind!r} is not one of ('uniform', 'hospital')")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    factor = lambda: np.exp(rng.normal(0.0, sigma, num_clients)).astype(np.float32)  # noqa: E731
    avail = ones
    if availability < 1:
        a = availability / (1 - availability)  # Beta(a, 1) has mean a / (a + 1)
        avail = rng.beta(a, 1.0, num_clients).astype(np.float32)
    rates = (speed * factor(), uplink * factor(), downlink * factor())
    phase = rng.uniform(0.0, 1.0, num_clients).astype(np.float32)  # drawn last: adding it kept
    return DeviceProfiles(*rates, avail, phase)  # the earlier draws (and results) unchanged


class SystemModel(NamedTuple):
    """How clients' devices shape a synchronous round (``simulate(system=...)``).

    Attributes:
        profiles: :class:`DeviceProfiles` with one entry per client.
        deadline: seconds the server waits for updates (``None``: for the slowest).
        deadline_policy: ``"drop"`` (late updates are discarded) or ``"partial"`` (a client
            runs the local steps that fit before the deadline; none fit: it sends nothing).
        selection: ``"uniform"`` (K clients uniformly; unavailable ones drop out),
            ``"poisson"`` (every client joins with probability K / C; the cohort is padded
            to a cap exceeded with probability < 1e-9 per round; unavailable ones drop out),
            ``"available"`` (K uniformly among those available this round), ``"fastest"``
            (the K available clients whose full local work takes the least simulated time),
            ``"feasible"`` (K uniformly among available clients that can finish before the
            deadline) or ``"power_of_choice"`` (Cho et al. 2022: ``candidates`` available
            clients drawn with probability proportional to their data size, then the K with
            the highest loss under the current global model). Fewer than K when fewer qualify.
            ``"oort"`` (Lai et al. 2021, Sec. 4: a fraction ``exploration`` of the cohort
            tries clients never seen, the rest are the available clients with the highest
            utility ``n_i * last loss_i + sqrt(0.1 log r / last round_i)``, times
            ``(T / t_i)^2`` for clients slower than the preferred round time ``T`` (the
            deadline, else the median client's time)).
        candidates: ``d``, the candidate set of Power-of-Choice (``K <= d <= C``).
        exploration: Oort's exploration fraction.
        diurnal: amplitude ``a`` of a daily availability cycle:
            ``p_i(t) = clip(p_i (1 + a cos(2 pi (t / 1 day + phase_i))), 0, 1)`` on the
            simulated clock ``t`` (0: constant availability).
    """

    profiles: DeviceProfiles
    deadline: float | None = None
    deadline_policy: str = "drop"
    selection: str = "uniform"
    candidates: int | None = None
    exploration: float = 0.2
    diurnal: float = 0.0


def system(
    profiles: DeviceProfiles,
    deadline: float | None = None,
    deadline_policy: str = "drop",
    selection: str = "uniform",
    candidates: int | None = None,
    exploration: float = 0.2,
    diurnal: float = 0.0,
) -> SystemModel:
    """Builds a :class:`SystemModel`, checking every field."""
    if not isinstance(profiles, DeviceProfiles):
        raise ValueError(f"profiles must be DeviceProfiles, got {type(profiles).__name__}")
    if deadline is not None and not (deadline > 0 and math.isfinite(deadline)):
        raise ValueError(f"deadline must be a finite number of seconds > 0, got {deadline}")
    if deadline_policy not in DEADLINE_POLICIES:
        raise ValueError(f"deadline_policy={deadline_policy!r} is not one of {DEADLINE_POLICIES}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r} is not one of {SELECTIONS}")
    if selection == "feasible" and deadline is None:
        raise ValueError("selection='feasible' needs a deadline")
    if (selection == "power_of_choice") != (candidates is not None):
        raise ValueError("candidates (d) is set exactly when selection='power_of_choice'")
    if not 0 <= exploration <= 1:
        raise ValueError(f"exploration must be in [0, 1], got {exploration}")
    if not 0 <= diurnal <= 1:
        raise ValueError(f"diurnal (amplitude) must be in [0, 1], got {diurnal}")
    if profiles.phase is None:
        profiles = profiles._replace(phase=np.zeros_like(np.asarray(profiles.speed)))
    sizes = {len(np.asarray(a)) for a in profiles}
    if len(sizes) != 1:
        raise ValueError(f"profile arrays differ in length: {sorted(sizes)}")
    p = DeviceProfiles(*(np.asarray(a, np.float32) for a in profiles))
    if np.any(p.speed <= 0) or np.any(p.uplink <= 0) or np.any(p.downlink <= 0):
        raise ValueError("profile speeds and bandwidths must all be > 0")
    if np.any(p.availability <= 0) or np.any(p.availability > 1):
        raise ValueError("profile availabilities must all be in (0, 1]")
    return SystemModel(
        p, deadline, deadline_policy, selection, candidates, float(exploration), float(diurnal)
    )


def client_times(
    steps: jax.Array,
    examples_per_step: jax.Array,
    speed: jax.Array,
    uplink: jax.Array,
    downlink: jax.Array,
    up_bytes: float,
    down_bytes: float,
) -> jax.Array:
    """``down_bytes / downlink + steps * examples_per_step / speed + up_bytes / uplink``."""
    compute = steps.astype(jnp.float32) * examples_per_step / speed
    return down_bytes / downlink + compute + up_bytes / uplink


def steps_within(
    deadline: float,
    examples_per_step: jax.Array,
    speed: jax.Array,
    uplink: jax.Array,
    downlink: jax.Array,
    up_bytes: float,
    down_bytes: float,
) -> jax.Array:
    """The most local steps a client can take and still deliver before ``deadline`` (>= 0)."""
    room = deadline - down_bytes / downlink - up_bytes / uplink
    per_step = examples_per_step / speed
    return jnp.maximum(jnp.floor(room / per_step), 0.0).astype(jnp.int32)


def build(
    num_clients: int,
    kind: str = "hospital",
    seed: int = 0,
    speed: float = 1_000.0,
    uplink: float = 1e6,
    downlink: float = 1e7,
    availability: float = 1.0,
    sigma: float = 1.0,
    deadline: float | None = None,
    deadline_policy: str = "drop",
    selection: str = "uniform",
    candidates: int | None = None,
    exploration: float = 0.2,
    diurnal: float = 0.0,
) -> SystemModel:
    """:func:`profiles` and :func:`system` in one call (what ``conf/system/*.yaml`` target;
    ``fljax-run`` passes the federation's ``num_clients``)."""
    p = profiles(num_clients, kind, seed, speed, uplink, downlink, availability, sigma)
    return system(p, deadline, deadline_policy, selection, candidates, exploration, diurnal)
