"""Many runs in one program: the checks of ``seeds=`` and ``sweep=`` (float hyperparameters
that the algorithm's builder accepts as traced values)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fljax.algorithms import rebuild


def check_seeds(seeds) -> None:
    """``seeds``: ``None`` or a non-empty list of distinct non-negative integers."""
    if seeds is None:
        return
    if isinstance(seeds, str | bytes) or not len(seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or not 0 <= s < 2**63:
            raise ValueError(f"seeds must hold non-negative integers below 2**63, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")


def _check_sweep_values(sweep, algorithm) -> dict:
    lengths = {k: len(v) if isinstance(v, list | tuple) else -1 for k, v in sweep.items()}
    if min(lengths.values()) < 1 or len(set(lengths.values())) != 1:
        raise ValueError(f"sweep values must be non-empty lists of equal length, got {lengths}")
    values = {}
    for k, vs in sweep.items():
        if k not in algorithm.hparams:
            raise ValueError(
                f"sweep key {k!r} is not a hyperparameter of {algorithm.name!r}; "
                f"allowed: {sorted(algorithm.hparams)}"
            )
        current = algorithm.hparams[k]
        if isinstance(current, bool) or not isinstance(current, float):
            raise ValueError(
                f"sweep key {k!r} is {current!r} in {algorithm.name!r}: only float "
                "hyperparameters (learning rates, coefficients) can vary inside one program"
            )
        for v in vs:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"sweep[{k!r}] must hold numbers, got {v!r}")
        values[k] = [float(v) for v in vs]
    return values


def check_sweep(sweep, algorithm) -> dict:
    """Validates ``simulate(sweep=...)``: ``{name: [floats]}`` of equal lengths, each value
    accepted by the algorithm's builder, also as a traced value. Returns ``{}`` without a
    sweep."""
    if sweep is None:
        return {}
    if not isinstance(sweep, dict) or not sweep:
        raise ValueError(f"sweep must be a non-empty dict of lists, got {sweep!r}")
    values = _check_sweep_values(sweep, algorithm)
    for i in range(len(next(iter(values.values())))):
        rebuild(algorithm, **{k: v[i] for k, v in values.items()})  # the builder's checks
    probe = {k: jnp.float32(v[0]) for k, v in values.items()}
    try:  # does the builder accept traced values (no float(), no Python branching on them)?
        jax.eval_shape(lambda p: rebuild(algorithm, **p).hparams and 0, probe)
    except (jax.errors.ConcretizationTypeError, TypeError) as e:
        raise ValueError(
            f"sweep {sorted(values)}: {algorithm.name!r} uses these values in Python control "
            f"flow or shapes, so they cannot vary inside one program; run them separately "
            f"({type(e).__name__})"
        ) from None
    return values


def check_subsets(subsets, num_clients: int, clients_per_round: int) -> np.ndarray | None:
    """Validates ``simulate(subsets=...)``: a non-empty list of participation masks, each
    ``num_clients`` booleans (or 0/1) including at least one site, and at least
    ``clients_per_round`` sites unless ``clients_per_round == num_clients`` (then every
    included site takes part in every round). Returns the masks ``[S, C]`` (``None``
    without subsets)."""
    if subsets is None:
        return None
    if isinstance(subsets, str | bytes) or not hasattr(subsets, "__len__") or not len(subsets):
        raise ValueError(f"subsets must be a non-empty list of participation masks, got "
                         f"{subsets!r}")  # fmt: skip
    masks = []
    for i, m in enumerate(subsets):
        arr = np.asarray(m)
        binary = arr.dtype == bool or (np.issubdtype(arr.dtype, np.integer)
                                       and np.isin(arr, (0, 1)).all())  # fmt: skip
        if arr.shape != (num_clients,) or not binary:
            raise ValueError(
                f"subsets[{i}] must be {num_clients} booleans (one per site, True = included), "
                f"got shape {arr.shape} dtype {arr.dtype}"
            )
        arr = arr.astype(bool)
        if not arr.any():
            raise ValueError(f"subsets[{i}] excludes every site: a federation needs at least "
                             "one site (the empty coalition's utility is the initial model's)")
        if clients_per_round < num_clients and arr.sum() < clients_per_round:
            raise ValueError(
                f"subsets[{i}] includes {int(arr.sum())} sites, fewer than clients_per_round="
                f"{clients_per_round}: the fixed-size cohort is drawn among the included "
                f"sites (clients_per_round={num_clients}, every site, lets every included "
                "site take part in every round)"
            )
        masks.append(arr)
    return np.stack(masks)
