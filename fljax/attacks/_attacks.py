"""Poisoning attacks: who is malicious, what they do to their data, what they send.

An :class:`Attack` names a fixed set of malicious clients (``fraction`` of the federation drawn
from the attack's own ``seed``, or explicit ``ids``; the same in every round and every training
seed) and up to two parts:

- ``poison``: ``(data, malicious[C]) -> data``, applied to their training split on the host
  before the run (label flipping, a backdoor trigger);
- ``craft``: ``(x[K, d], malicious[K], benign[K], key) -> x'[K, d]``, applied inside the
  compiled round to the flattened updates of the cohort; rows of malicious clients are
  replaced. The omniscient attacks (ALIE, IPM, Min-Max, Min-Sum) see the round's benign
  updates and collude: every malicious client sends the same crafted update.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

PERTURBATIONS = ("unit_vec", "std", "sign")


class Attack(NamedTuple):
    """A poisoning attack (build it with :func:`get`).

    Attributes:
        name: registry name.
        fraction: fraction of the clients that are malicious (drawn from ``seed``), or
            ``None`` with ``ids``.
        ids: the malicious clients' indices, or ``None`` with ``fraction``.
        seed: the seed that draws the malicious set (fixed across training seeds).
        hparams: the attack's hyperparameters.
        poison: ``(FederatedData, malicious[C] bool, rng) -> FederatedData`` or ``None``.
        craft: ``(x[K, d], malicious[K], benign[K], key) -> x'[K, d]`` or ``None``.
        trigger: ``(x[..., features], clean data) -> x`` stamping the backdoor trigger
            (``None`` unless a backdoor); ``target``: the backdoor's target label.
    """

    name: str
    fraction: float | None
    ids: tuple[int, ...] | None
    seed: int
    hparams: dict
    poison: Callable | None = None
    craft: Callable | None = None
    trigger: Callable | None = None
    target: int | None = None


def malicious_clients(attack: Attack, num_clients: int) -> np.ndarray:
    """``[C]`` bool: the attack's malicious clients in a federation of ``num_clients``.

    ``fraction``: ``round(fraction * C)`` clients (at least one when ``fraction > 0``) drawn
    without replacement by ``numpy.random.default_rng(seed)``; ``ids``: those clients.
    """
    mask = np.zeros(num_clients, bool)
    if attack.ids is not None:
        bad = [i for i in attack.ids if not 0 <= i < num_clients]
        if bad:
            raise ValueError(f"attack {attack.name!r}: malicious client ids {bad} are outside "
                             f"the federation's clients 0..{num_clients - 1}")  # fmt: skip
        mask[list(attack.ids)] = True
        return mask
    count = int(round(attack.fraction * num_clients))
    count = max(count, 1) if attack.fraction > 0 else 0
    rng = np.random.default_rng(attack.seed)
    mask[rng.choice(num_clients, size=count, replace=False)] = True
    return mask


def _who(name: str, fraction, ids, seed) -> tuple:
    if ids is not None:
        if fraction is not None:
            raise ValueError(f"attack {name!r}: give fraction or ids, not both (ids={list(ids)!r},"
                             f" fraction={fraction!r}: set fraction=null)")  # fmt: skip
        if isinstance(ids, int):
            ids = [ids]
        ids = tuple(int(i) for i in ids)
        if len(set(ids)) != len(ids):
            raise ValueError(f"attack {name!r}: ids {list(ids)} repeat a client")
        return None, ids, int(seed)
    if fraction is None:
        raise ValueError(f"attack {name!r}: give fraction (of the clients, in [0, 1)) or ids")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not (0.0 <= fraction < 1.0)
    ):
        raise ValueError(f"attack {name!r}: fraction must be in [0, 1), got {fraction!r}")
    return float(fraction), None, int(seed)


def _masked_stats(x: jax.Array, benign: jax.Array):
    """Mean and (population) standard deviation of the benign rows, coordinate-wise."""
    w = benign.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    mu = (w @ x) / n
    var = (w @ (x - mu[None, :]) ** 2) / n
    return mu, jnp.sqrt(var)


def _replace(x, malicious, crafted_row):
    return jnp.where(malicious[:, None], crafted_row[None, :], x)


def _scaled(factor: float) -> Callable:
    """The craft sending ``factor`` times one's own honest update."""

    def craft(x, malicious, benign, key):
        del benign, key
        return jnp.where(malicious[:, None], factor * x, x)

    return craft


# --- model poisoning: one's own update ----------------------------------------------------


def sign_flip(fraction=None, ids=None, seed: int = 0, scale: float = 1.0) -> Attack:
    r"""Sign flipping: each malicious client sends :math:`-s\,\Delta_k` (its own honest
    update, reversed and scaled).

    References:
        Allen-Zhu et al. (2021), "Byzantine-Resilient Non-Convex Stochastic Gradient
        Descent", ICLR (the sign-flipping attack of their experiments); Karimireddy et al.
        (2021), Sec. 6.
    """
    return Attack("sign_flip", *_who("sign_flip", fraction, ids, seed), {"scale": scale},
                  craft=_scaled(-scale))  # fmt: skip


def scaling(fraction=None, ids=None, seed: int = 0, scale: float = 10.0) -> Attack:
    r"""Scaling: each malicious client sends :math:`\gamma \Delta_k`. With a backdoor this is
    model replacement (use :func:`backdoor` with ``scale=gamma``).

    References:
        Bagdasaryan et al. (2020), "How To Backdoor Federated Learning", AISTATS, Eq. (3):
        :math:`\tilde L = \gamma (X - G^t) + G^t`, :math:`\gamma = n / \eta`.
    """
    return Attack("scaling", *_who("scaling", fraction, ids, seed), {"scale": scale},
                  craft=_scaled(scale))  # fmt: skip


def gaussian(fraction=None, ids=None, seed: int = 0, sigma: float = 1.0) -> Attack:
    r"""Gaussian updates: each malicious client sends :math:`\mathcal N(0, \sigma^2 I)`
    (independent draws; not colluding).

    References:
        Blanchard et al. (2017), NeurIPS, Sec. 6 (Gaussian Byzantine workers).
    """
    if not sigma >= 0:
        raise ValueError(f"attack 'gaussian': sigma must be >= 0, got {sigma!r}")

    def craft(x, malicious, benign, key):
        del benign
        noise = sigma * jax.random.normal(key, x.shape, x.dtype)
        return jnp.where(malicious[:, None], noise, x)

    return Attack("gaussian", *_who("gaussian", fraction, ids, seed), {"sigma": sigma},
                  craft=craft)  # fmt: skip


# --- model poisoning: omniscient and colluding --------------------------------------------


def alie_z(n, num_malicious):
    r""":math:`z_{max} = \Phi^{-1}((n - s) / n)`, :math:`s = \lfloor n/2 + 1 \rfloor - m`
    (Baruch et al. 2019, Algorithm 3), for ``n`` workers of which ``m`` are malicious."""
    n = jnp.asarray(n, jnp.float32)
    s = jnp.floor(n / 2.0 + 1.0) - jnp.asarray(num_malicious, jnp.float32)
    return ndtri(jnp.clip((n - s) / jnp.maximum(n, 1.0), 1e-6, 1.0 - 1e-6))


def alie(fraction=None, ids=None, seed: int = 0, z: float | None = None) -> Attack:
    r"""A Little Is Enough: every malicious client sends :math:`\mu - z\sigma`
    (coordinate-wise mean and standard deviation of the round's benign updates), with
    :math:`z = z_{max}` of :func:`alie_z` for the round's ``n`` contributing clients and
    ``m`` malicious ones unless ``z`` is given.

    References:
        Baruch, Baruch and Goldberg (2019), "A Little Is Enough: Circumventing Defenses For
        Distributed Learning", NeurIPS, Algorithm 3.
    """

    def craft(x, malicious, benign, key):
        del key
        mu, sd = _masked_stats(x, benign)
        m = jnp.sum(malicious)
        zz = alie_z(jnp.sum(benign) + m, m) if z is None else z
        return _replace(x, malicious, mu - zz * sd)

    return Attack("alie", *_who("alie", fraction, ids, seed), {"z": z}, craft=craft)


def ipm(fraction=None, ids=None, seed: int = 0, epsilon: float = 0.1) -> Attack:
    r"""Inner-product manipulation: every malicious client sends :math:`-\epsilon \bar g`,
    :math:`\bar g` the mean of the round's benign updates (small :math:`\epsilon` defeats
    the median and Krum, large :math:`\epsilon` the mean).

    References:
        Xie, Koyejo and Gupta (2020), "Fall of Empires: Breaking Byzantine-tolerant SGD by
        Inner Product Manipulation", UAI, Sec. 4.
    """

    def craft(x, malicious, benign, key):
        del key
        mu, _ = _masked_stats(x, benign)
        return _replace(x, malicious, -epsilon * mu)

    return Attack("ipm", *_who("ipm", fraction, ids, seed), {"epsilon": epsilon}, craft=craft)


def _direction(kind: str, mu, sd):
    if kind == "unit_vec":
        return -mu / jnp.maximum(jnp.linalg.norm(mu), 1e-30)
    if kind == "std":
        return -sd
    return -jnp.sign(mu)


def _optimize_gamma(ok: Callable, gamma_init: float, steps: int, max_doublings: int = 40):
    r"""The largest :math:`\gamma` with ``ok(gamma)`` (Shejwalkar and Houmansadr 2021, Eq. (5)
    / (6): :math:`\arg\max_\gamma` under the distance constraint). Their Algorithm 1 searches
    :math:`(0, 2\gamma_{init})` by halving steps, which caps :math:`\gamma` when benign updates
    are far apart (non-IID data); here :math:`\gamma` is first doubled from ``gamma_init``
    until the constraint fails (at most ``max_doublings`` times), then the bracket is bisected
    ``steps`` times; the last feasible value is returned (0 if none)."""

    def grow(carry):
        lo, hi, j = carry
        return hi, 2.0 * hi, j + 1

    def growing(carry):
        _, hi, j = carry
        return ok(hi) & (j < max_doublings)

    g0 = jnp.asarray(gamma_init, jnp.float32)
    lo, hi, _ = jax.lax.while_loop(growing, grow, (jnp.zeros((), jnp.float32), g0, 0))

    def bisect(_, carry):
        lo, hi = carry
        mid = 0.5 * (lo + hi)
        good = ok(mid)
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    lo, _ = jax.lax.fori_loop(0, steps, bisect, (lo, hi))
    return lo


def _sq_dists(x):
    sq = jnp.sum(x * x, axis=1)
    return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)


def _min_max_sum(name: str, rule: str):
    def build(fraction=None, ids=None, seed: int = 0, perturbation: str = "std",
              gamma_init: float = 10.0, steps: int = 30) -> Attack:  # fmt: skip
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"attack {name!r}: perturbation={perturbation!r} is not one of "
                             f"{PERTURBATIONS}")  # fmt: skip

        def craft(x, malicious, benign, key):
            del key
            mu, sd = _masked_stats(x, benign)
            p = _direction(perturbation, mu, sd)
            d2 = _sq_dists(x)
            pair = benign[:, None] & benign[None, :]
            if rule == "max":  # max_i ||m - g_i|| <= max_{i,j} ||g_i - g_j||
                bound = jnp.max(jnp.where(pair, d2, 0.0))

                def ok(gamma):
                    m = mu + gamma * p
                    dist = jnp.sum((x - m[None, :]) ** 2, axis=1)
                    return jnp.max(jnp.where(benign, dist, 0.0)) <= bound
            else:  # sum_i ||m - g_i||^2 <= max_i sum_j ||g_i - g_j||^2
                bound = jnp.max(jnp.where(benign, jnp.sum(jnp.where(pair, d2, 0.0), axis=1),
                                          0.0))  # fmt: skip

                def ok(gamma):
                    m = mu + gamma * p
                    dist = jnp.sum((x - m[None, :]) ** 2, axis=1)
                    return jnp.sum(jnp.where(benign, dist, 0.0)) <= bound

            gamma = _optimize_gamma(ok, gamma_init, steps)
            return _replace(x, malicious, mu + gamma * p)

        hp = {"perturbation": perturbation, "gamma_init": gamma_init, "steps": steps}
        return Attack(name, *_who(name, fraction, ids, seed), hp, craft=craft)

    return build


min_max = _min_max_sum("min_max", "max")
min_max.__doc__ = r"""Min-Max (AGR-agnostic): every malicious client sends
:math:`\nabla^m = \mu + \gamma \nabla^p` with the largest :math:`\gamma` such that
:math:`\max_i \|\nabla^m - \nabla_i\| \le \max_{i,j} \|\nabla_i - \nabla_j\|` over the round's
benign updates; :math:`\nabla^p` is ``-std``, ``-unit_vec`` (of the mean) or ``-sign``.
:math:`\gamma` is searched from ``gamma_init`` (doubled while feasible, then ``steps``
bisections; see ``_optimize_gamma`` for how this departs from their Algorithm 1's fixed range).

References:
    Shejwalkar and Houmansadr (2021), "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS, Eq. (5) and Algorithm 1."""
min_sum = _min_max_sum("min_sum", "sum")
min_sum.__doc__ = r"""Min-Sum (AGR-agnostic): as :func:`min_max` with the constraint
:math:`\sum_i \|\nabla^m - \nabla_i\|^2 \le \max_i \sum_j \|\nabla_i - \nabla_j\|^2`.

References:
    Shejwalkar and Houmansadr (2021), NDSS, Eq. (6) and Algorithm 1."""


# --- data poisoning -----------------------------------------------------------------------


def _classification(name: str, data) -> None:
    if data.task != "classification":
        raise ValueError(f"attack {name!r} needs a classification task (labels to flip or a "
                         f"target label), not task={data.task!r}")  # fmt: skip


def label_flip(fraction=None, ids=None, seed: int = 0) -> Attack:
    r"""Label flipping: every training label :math:`l` of a malicious client becomes
    :math:`L - l - 1` (``L`` classes).

    References:
        Fang et al. (2020), "Local Model Poisoning Attacks to Byzantine-Robust Federated
        Learning", USENIX Security, Sec. 5 (label flipping attack); Tolpegin et al. (2020).
    """

    def poison(data, malicious, rng):
        del rng
        _classification("label_flip", data)
        x, y, n = data.train
        y = np.array(y, copy=True)
        y[malicious] = data.num_classes - 1 - y[malicious]
        return dataclasses.replace(data, train=type(data.train)(x, y, n))

    return Attack("label_flip", *_who("label_flip", fraction, ids, seed), {}, poison=poison)


def triggered(x: np.ndarray, size: int, value: float) -> np.ndarray:
    """``x[..., *example shape]`` with the backdoor trigger stamped: images (``H, W, C``) a
    ``size x size`` square of ``value`` in the bottom-right corner; feature vectors their last
    ``size`` features set to ``value``."""
    x = np.array(x, copy=True)
    if x.ndim >= 3 and x.shape[-1] <= 4 and x.shape[-2] >= size and x.shape[-3] >= size:
        x[..., -size:, -size:, :] = value
    else:
        x[..., -size:] = value
    return x


def trigger_value_of(trigger_value: float | None, data) -> float:
    """The trigger's value: as given, else the largest real training input of ``data``."""
    if trigger_value is not None:
        return float(trigger_value)
    train = type(data.train)(*(np.asarray(a) for a in data.train))
    return float(np.max(train.x[train.mask]))


def backdoor(fraction=None, ids=None, seed: int = 0, target: int = 0,
             poison_fraction: float = 0.5, trigger_size: int = 3,
             trigger_value: float | None = None, scale: float = 1.0) -> Attack:  # fmt: skip
    r"""A backdoor: ``poison_fraction`` of each malicious client's training examples get the
    trigger (:func:`triggered`) and the label ``target``; with ``scale > 1`` the malicious
    update is also boosted (model replacement, :math:`\gamma` = ``scale``). Success is the
    attack success rate: the fraction of triggered test inputs (of other labels) classified
    as ``target`` (``metrics["backdoor_success"]``). ``trigger_value``: default the largest
    value of the training inputs (a plausible, in-range extreme).

    References:
        Gu, Dolan-Gavitt and Garg (2017), "BadNets", arXiv:1708.06733 (the pixel-pattern
        trigger); Bagdasaryan et al. (2020), AISTATS, Sec. 4 (training on a mix of clean and
        backdoor data, Eq. (3) scaling).
    """
    if not 0.0 < poison_fraction <= 1.0:
        raise ValueError(f"attack 'backdoor': poison_fraction must be in (0, 1], got "
                         f"{poison_fraction!r}")  # fmt: skip
    if isinstance(trigger_size, bool) or not isinstance(trigger_size, int) or trigger_size < 1:
        raise ValueError(f"attack 'backdoor': trigger_size must be a positive integer, got "
                         f"{trigger_size!r}")  # fmt: skip

    def trigger(x, data):
        return triggered(x, trigger_size, trigger_value_of(trigger_value, data))

    def poison(data, malicious, rng):
        _classification("backdoor", data)
        if not 0 <= target < data.num_classes:
            raise ValueError(f"attack 'backdoor': target={target} is not a class of "
                             f"{data.name!r} (0..{data.num_classes - 1})")  # fmt: skip
        x, y, n = (np.asarray(a) for a in data.train)
        x, y = np.array(x, copy=True), np.array(y, copy=True)
        value = trigger_value_of(trigger_value, data)  # once, from the clean data
        for c in np.flatnonzero(malicious):
            k = int(math.ceil(poison_fraction * int(n[c])))
            rows = rng.choice(int(n[c]), size=k, replace=False)
            x[c, rows] = triggered(x[c, rows], trigger_size, value)
            y[c, rows] = target
        return dataclasses.replace(data, train=type(data.train)(x, y, n))

    craft = None if scale == 1.0 else _scaled(scale)  # model replacement
    hp = {"target": target, "poison_fraction": poison_fraction, "trigger_size": trigger_size,
          "trigger_value": trigger_value, "scale": scale}  # fmt: skip
    return Attack("backdoor", *_who("backdoor", fraction, ids, seed), hp, poison=poison,
                  craft=craft, trigger=trigger, target=target)  # fmt: skip


_REGISTRY: dict[str, Callable[..., Attack]] = {
    "label_flip": label_flip,
    "backdoor": backdoor,
    "sign_flip": sign_flip,
    "scaling": scaling,
    "gaussian": gaussian,
    "alie": alie,
    "ipm": ipm,
    "min_max": min_max,
    "min_sum": min_sum,
}


def names() -> list[str]:
    """The registered attack names."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs: Any) -> Attack:
    """The attack ``name`` with ``kwargs`` (``fraction`` or ``ids``, ``seed``, its own).

    Examples:
        >>> import fljax
        >>> fljax.attacks.get("alie", fraction=0.2).fraction
        0.2
    """
    from fljax._base import lookup

    return lookup("attack", _REGISTRY, name, kwargs)(**kwargs)
