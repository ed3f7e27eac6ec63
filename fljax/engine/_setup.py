"""From a run's arguments to what the round needs: the algorithm with privacy, secure
aggregation and compression wired into its chains, the privacy plan, the cohort width, the
initial parameters and the exact bytes each message costs on the wire."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fljax._base import chain
from fljax.client import num_local_steps
from fljax.engine._clock import Stragglers
from fljax.engine._round import client_update_for, plan_local_work_for, train_spec
from fljax.engine._rules import Setup, amplified_selection
from fljax.engine._select import cohort_width as _cohort_width
from fljax.models import num_params, param_bytes
from fljax.privacy import message_bytes, secure_aggregator
from fljax.privacy import plan as privacy_plan

PyTree = Any


def privacy_plan_of(setup: Setup, rounds: int):
    """The :class:`PrivacyPlan` of ``setup.privacy`` for this federation and schedule (it
    depends on the local work and cohort, never on float hyperparameters such as learning
    rates, so one plan serves every value of a sweep)."""
    algorithm, privacy, data = setup.algorithm, setup.privacy, setup.data
    spec = train_spec(data, algorithm)
    steps = np.asarray(
        num_local_steps(jnp.asarray(spec.num_examples), plan_local_work_for(algorithm, spec))
    )
    if isinstance(algorithm.local_steps, tuple):
        steps = np.asarray(algorithm.local_steps)
    num_units = spec.num_examples.shape[0]
    return privacy_plan(
        privacy,
        num_clients=num_units,
        clients_per_round=min(setup.clients_per_round, num_units),
        rounds=rounds,
        steps=steps,
        num_examples=np.asarray(spec.num_examples),
        batch_size=algorithm.batch_size,
        selection=amplified_selection(setup),
    )


def wire_components(algorithm, setup: Setup, dp_plan):
    """``algorithm`` with the run's components in its chains: client-level DP replaces the
    aggregator with the clipped noisy sum, local DP appends the local Gaussian mechanism to
    the client chain (record-level DP-SGD lives in local training), secure aggregation makes
    the sum secure (around DP's clipped sum), compression comes last in the client chain; a
    robust ``setup.aggregator`` replaces the weighted mean first."""
    if setup.aggregator is not None:
        algorithm = algorithm._replace(aggregator=setup.aggregator.transform)
    if dp_plan is not None and dp_plan.privacy.level == "client":
        dp = dp_plan.aggregator()
        if setup.aggregator is not None and setup.aggregator.name == "centered_clipping":
            from fljax.aggregate._robust import centered_dp

            dp = centered_dp(dp_plan.clipped_sum())  # clipped around the last release
        algorithm = algorithm._replace(aggregator=dp)
    elif dp_plan is not None and dp_plan.privacy.level == "local":
        algorithm = algorithm._replace(
            client_transform=chain(algorithm.client_transform, dp_plan.client_transform())
        )
    if setup.secagg is not None:
        algorithm = with_secagg(setup, algorithm, dp_plan)
    return with_compression(algorithm, setup.compression)


def with_secagg(setup: Setup, algorithm, dp_plan):
    """The algorithm whose sum is a simulated secure sum: of its aggregator's partial sums
    (:class:`fljax.Linear`), or of DP's clipped updates under client-level DP."""
    n = np.asarray(setup.data.train.num_examples)
    bound = float(n.max()) if algorithm.weighting == "num_examples" else 1.0
    if dp_plan is not None and dp_plan.privacy.level == "client":
        return algorithm._replace(
            aggregator=secure_aggregator(setup.secagg, bound, inner=dp_plan.clipped_sum())
        )
    max_steps = plan_local_work_for(algorithm, train_spec(setup.data, algorithm)).max_steps
    secure = secure_aggregator(setup.secagg, bound, linear=algorithm.aggregator.linear,
                               max_steps=max_steps)  # fmt: skip
    return algorithm._replace(aggregator=secure)


def with_compression(algorithm, compression):
    """Compression appended to the client chain (after the algorithm's and local DP's)."""
    if compression is None:
        return algorithm
    return algorithm._replace(
        client_transform=chain(algorithm.client_transform, compression.transform)
    )


def cohort_width(setup: Setup, dp_plan) -> int:
    """The ``vmap``ped cohort of the run (:func:`fljax.engine._select.cohort_width`)."""
    return _cohort_width(setup.data.num_clients, setup.clients_per_round, dp_plan, setup.system)


def stragglers_of(setup: Setup) -> Stragglers | None:
    """``K - round(K (1 - fraction))`` stragglers per round, or ``None``."""
    if setup.stragglers <= 0:
        return None
    k = setup.clients_per_round
    return Stragglers(k - int(round(k * (1.0 - setup.stragglers))), setup.straggler_policy)


def initial_params(model, data, seed_key, params):
    """``model.init`` from the seed's init key, or the given ``params`` after a structure
    check; then the model's output width is checked against the task."""
    k_init, _ = jax.random.split(seed_key)
    if params is None:
        params = model.init(k_init, data.sample())
    else:
        params = _checked_params(model, params, jax.eval_shape(model.init, k_init,
                                                                data.sample()))  # fmt: skip
    out_shape = jax.eval_shape(lambda p, x: model.apply(p, x), params, data.sample()).shape
    expected = data.num_classes if data.task == "classification" else 1
    if out_shape[-1] != expected:
        raise ValueError(
            f"model {model.name!r} outputs {out_shape[-1]} values per example but the "
            f"{data.task} dataset {data.name!r} needs {expected} (num_classes)"
        )
    return params


def _checked_params(model, params, expected):
    """``params`` as arrays after checking their tree, and each leaf's shape and dtype,
    against the model's own initialisation ``expected`` (shape structs)."""
    if jax.tree.structure(params) != jax.tree.structure(expected):
        raise ValueError(f"params do not match the structure of model {model.name!r}")
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(params),
                                 jax.tree.leaves(expected), strict=True):  # fmt: skip
        if np.shape(got) != want.shape:
            raise ValueError(
                f"params leaf {jax.tree_util.keystr(path)} has shape {np.shape(got)} but model "
                f"{model.name!r} needs {want.shape}: warm-start weights of another "
                "architecture or width (fljax.models.load_weights(..., exclude=[...]) keeps "
                "the model's own initialisation for the leaves that differ)"
            )
    return jax.tree.map(lambda x, w: jnp.asarray(x, w.dtype), params, expected)


def tree_bytes(tree) -> int:
    """Bytes of a dense encoding of arrays or shape structs."""
    return int(sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


class Wire(NamedTuple):
    """Bytes on the wire (dense float32 encodings, or the compressors' exact sizes).

    Attributes:
        up, down: per participating client and round.
        broadcast: per round to EVERY client (downlink compression keeps all copies current).
        model: the shared part of the model.
        secagg: the SecAgg protocol's per-client message sizes, or ``None``.
    """

    up: float
    down: float
    broadcast: int
    model: int
    secagg: dict | None

    @property
    def bytes(self) -> tuple[float, float]:
        """``(up, down)`` per client, what the simulated clock charges."""
        return self.up, self.down


def _upload_shape(algorithm, model, data, spec, params, state):
    """Shape of one client's extra upload (``()`` for most algorithms)."""
    if algorithm.client_finalize is None:
        return ()
    _, update = client_update_for(algorithm, model, data, spec)
    one_state = jax.tree.map(lambda a: a[0], state.client_states)
    one = [jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in (spec.x, spec.y, spec.num_examples)]
    out = jax.eval_shape(update, params, *one, jax.random.key(0), one_state,
                         state.algorithm_state)  # fmt: skip
    return out.upload


def wire_bytes(setup: Setup, algorithm, model, params, state, width: int) -> Wire:
    """The :class:`Wire` of a run (the round's messages, by mode and component)."""
    compression, downlink, secagg = setup.compression, setup.downlink, setup.secagg
    model_bytes = param_bytes(params)
    personal = algorithm.personal
    if personal is not None:  # private leaves never leave the client, in either direction
        model_bytes = sum(
            int(jnp.size(p)) * jnp.dtype(p.dtype).itemsize
            for p, shared in zip(jax.tree.leaves(params), personal.shared(params), strict=True)
            if shared
        )
    broadcast, secagg_bytes, mode = 0, None, algorithm.mode
    if secagg is not None:
        sent = num_params(params)  # selective sharing masks only the shared leaves
        if compression is not None:
            sent = compression.bits(params) // 32
        secagg_bytes = message_bytes(secagg, sent, width)
    if mode in ("federated", "async"):
        delta_bytes = model_bytes
        if compression is not None:
            delta_bytes = math.ceil(compression.bits(params) / 8)
        spec = train_spec(setup.data, algorithm)
        up = delta_bytes + tree_bytes(_upload_shape(algorithm, model, setup.data, spec, params,
                                                    state))  # fmt: skip
        down = model_bytes + tree_bytes(state.algorithm_state)
        if downlink is not None:  # every client must track x_hat: each broadcast goes to all C
            down = tree_bytes(state.algorithm_state)
            broadcast = setup.data.num_clients * math.ceil(downlink.bits(params) / 8)
    elif mode == "cyclic":
        up = down = model_bytes
    else:  # centralized and local training send nothing
        up = down = 0
    if secagg_bytes is not None:
        up = sum(v for k, v in secagg_bytes.items() if k != "unmasking_max")
    return Wire(float(up), float(down), broadcast, model_bytes, secagg_bytes)
