"""Local training for one client, written once and ``vmap``ped over the selected clients.

Unequal client sizes stay inside one ``vmap``: every client runs the same static number of
scan steps ``T``; steps past its own count are masked no-ops (``jnp.where``, not ``cond``), and
padded examples carry a zero weight in the batch loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fljax.models import Model

PyTree = Any
TASKS = ("classification", "regression", "survival")


class LocalPlan(NamedTuple):
    """Static shape of the local work, computed on the host from the federation's sizes.

    Attributes:
        batch_size: ``B`` examples per step (the padded size ``N`` when full batch).
        full_batch: every step uses all of the client's examples.
        local_epochs: passes over the client's own data (``None`` in fixed-step mode).
        local_steps: a fixed number of steps for every client (``None`` in epoch mode).
        max_steps: ``T``, scan length: the most steps any client takes.
        num_epochs: shuffled passes to precompute (enough for the smallest client).
    """

    batch_size: int
    full_batch: bool
    local_epochs: int | None
    local_steps: int | None  # the largest, when clients have their own step counts
    max_steps: int
    num_epochs: int


def plan_local_work(
    num_examples: np.ndarray,
    n_max: int,
    *,
    local_epochs: int | None,
    local_steps: int | tuple[int, ...] | None,
    batch_size: int | None,
) -> LocalPlan:
    """Derives the static :class:`LocalPlan` for clients of sizes ``num_examples[C]``.

    In epoch mode client ``i`` takes ``local_epochs * ceil(n_i / B)`` steps; in fixed-step mode
    every client takes ``local_steps``, cycling through reshuffled epochs of its data.
    """
    if (local_epochs is None) == (local_steps is None):
        raise ValueError(
            "set exactly one of local_epochs and local_steps (the other to None), got "
            f"local_epochs={local_epochs}, local_steps={local_steps}"
        )
    num_examples = np.asarray(num_examples)
    full = batch_size is None
    b = int(n_max) if full else int(batch_size)
    nonempty = num_examples[num_examples > 0]
    if nonempty.size == 0:
        raise ValueError("every client has zero training examples")
    steps_per_epoch = np.ceil(nonempty / b).astype(int)
    if local_epochs is not None:
        return LocalPlan(
            b,
            full,
            int(local_epochs),
            None,
            int(local_epochs * steps_per_epoch.max()),
            int(local_epochs),
        )
    t = int(np.max(local_steps))
    epochs = int(math.ceil(t / steps_per_epoch.min()))
    return LocalPlan(b, full, None, t, t, epochs)


def num_local_steps(n: jax.Array, plan: LocalPlan) -> jax.Array:
    """Steps a client with ``n`` examples takes under ``plan`` (0 when ``n == 0``)."""
    if plan.local_steps is not None:
        return jnp.where(n > 0, plan.local_steps, 0).astype(jnp.int32)
    return (plan.local_epochs * ((n + plan.batch_size - 1) // plan.batch_size)).astype(jnp.int32)


_PACKED_MAX_N = 512  # up to here the packed key keeps >= 23 random bits


def shuffle_real_first(key: jax.Array, n: jax.Array, n_max: int) -> jax.Array:
    """A uniformly random order of positions ``0..n-1``, followed by ``n..n_max-1`` in order.

    Sorts random 32-bit keys. For ``n_max <= 512`` the position is packed into the low
    ``ceil(log2 n_max)`` bits of each key, so one single-operand sort does the work (about 4x
    faster on CPU than a key-value sort) while keeping >= 23 random bits per key, as many as
    a float32-uniform argsort. Larger clients use a key-value sort of full 32-bit keys. Equal
    random keys (probability ~ n^2 / 2^24 resp. n^2 / 2^33 per shuffle) keep their original
    order, as in any sort-based shuffle.
    """
    pos = jnp.arange(n_max, dtype=jnp.uint32)
    bits = jax.random.bits(key, (n_max,), jnp.uint32)
    if n_max <= _PACKED_MAX_N:
        low = max(int(n_max - 1).bit_length(), 1)
        top = jnp.uint32((1 << (32 - low)) - 1)  # reserved: padding sorts last
        hi = jnp.where(pos < n, bits % top, top)
        packed = (hi << low) | pos
        return (jnp.sort(packed) & jnp.uint32((1 << low) - 1)).astype(jnp.int32)
    keys = jnp.where(pos < n, bits >> 1, jnp.uint32(0xFFFFFFFF))
    return jax.lax.sort_key_val(keys, pos.astype(jnp.int32))[1]


def batch_indices(key: jax.Array, n: jax.Array, n_max: int, plan: LocalPlan):
    """Minibatch schedule of one client: ``idx[T, B]`` example indices and ``mask[T, B]``.

    Epoch ``e`` is a fresh uniform permutation of the client's ``n`` real examples
    (:func:`shuffle_real_first` with ``fold_in(key, e)``); step ``t`` reads batch ``t mod S``
    of epoch ``t // S``, where
    ``S = ceil(n / B)``; the last batch of an epoch is partial (masked). Rows past the client's
    step count are all-False.
    """
    b, t_max = plan.batch_size, plan.max_steps
    if plan.full_batch:
        idx = jnp.broadcast_to(jnp.arange(n_max), (t_max, n_max))
        steps = num_local_steps(n, plan)
        mask = (jnp.arange(n_max)[None, :] < n) & (jnp.arange(t_max)[:, None] < steps)
        return idx, mask
    perms = jax.vmap(lambda e: shuffle_real_first(jax.random.fold_in(key, e), n, n_max))(
        jnp.arange(plan.num_epochs)
    )  # [E, N]
    s = jnp.maximum((n + b - 1) // b, 1)
    t = jnp.arange(t_max)
    epoch = jnp.minimum(t // s, plan.num_epochs - 1)
    slot = (t % s)[:, None] * b + jnp.arange(b)[None, :]  # [T, B] position inside the epoch
    idx = perms[epoch[:, None], jnp.minimum(slot, n_max - 1)]
    mask = (slot < n) & (t < num_local_steps(n, plan))[:, None]
    return idx, mask


def example_loss_fn(task: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Per-example loss: softmax cross-entropy (classification) or squared error (regression)."""
    if task == "classification":
        return lambda out, y: optax.softmax_cross_entropy_with_integer_labels(out, y)
    if task == "regression":
        return lambda out, y: jnp.square(out[..., 0] - y)
    raise ValueError(f"task={task!r} has no per-example loss; use batch_loss_fn")


def batch_loss_fn(task: str, **options) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """``loss(outputs, y, mask) -> scalar`` of a batch: the masked mean example loss, or for
    ``"survival"`` the Cox negative partial log-likelihood (Breslow) within the batch
    (``options``: ``cox_normalize="events"`` or ``"batch"``)."""
    if task == "survival":
        from fljax.metrics import cox_loss

        normalize = options.get("cox_normalize", "events")
        if normalize not in ("events", "batch"):
            raise ValueError(f"cox_normalize={normalize!r} is not one of ('events', 'batch')")
        return lambda out, y, mask: cox_loss(out, y, mask, normalize=normalize)
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    example_loss = example_loss_fn(task)
    return lambda out, y, mask: masked_mean(example_loss(out, y), mask)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` over ``mask`` (0 when the mask is empty)."""
    m = mask.astype(values.dtype)
    return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


class ClientOutput(NamedTuple):
    """What one client returns to the round."""

    delta: PyTree  # w_local - w_global, same tree as params
    client_state: PyTree  # the client's new persistent state
    upload: PyTree  # extra message to the server (e.g. SCAFFOLD's delta c_i); () if none
    train_loss: jax.Array  # (), float32: mean batch data loss over the steps taken
    num_steps: jax.Array  # (), int32: local steps taken


class ClientContext(NamedTuple):
    """What an algorithm's ``client_finalize`` sees after local training (one client)."""

    global_params: PyTree
    local_params: PyTree
    delta: PyTree
    client_state: PyTree
    server_state: PyTree
    num_steps: jax.Array  # (), int32
    grad_fn: Callable[[PyTree], PyTree]  # full-batch gradient of the data loss at given params


Regularizer = Callable[[PyTree, PyTree, PyTree, PyTree], jax.Array]


class DPSGD(NamedTuple):
    """Sample-level DP-SGD inside each client (Abadi et al. 2016, Algorithm 1).

    Every local step samples each of the client's ``n`` records independently with probability
    ``q = batch_size / n`` (Poisson), clips each sampled record's gradient to L2 norm
    ``clip_norm``, adds ``N(0, (noise_multiplier * clip_norm)^2)`` to their sum and divides by
    the expected batch size ``q n = min(batch_size, n)`` (fixed denominator).
    """

    clip_norm: float
    noise_multiplier: float
    batch_size: int


def clip_by_norm(tree: PyTree, clip_norm: jax.Array | float) -> tuple[PyTree, jax.Array]:
    """``tree * min(1, clip_norm / ||tree||_2)`` (global L2 norm) and the norm before clipping."""
    norm = optax.global_norm(tree)
    scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda a: (a * scale).astype(a.dtype), tree), norm


def gaussian_noise_like(key: jax.Array, tree: PyTree, std: jax.Array | float) -> PyTree:
    """Independent ``N(0, std^2)`` entries shaped like ``tree`` (one key per leaf)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    pairs = zip(keys[: len(leaves)], leaves, strict=True)
    noise = [std * jax.random.normal(k, a.shape, a.dtype) for k, a in pairs]
    return jax.tree.unflatten(treedef, noise)


def _check_local_options(model: Model, task: str, dp_sgd, personal) -> None:
    """Refuses local-training options that do not compose, with the reason."""
    stateful = model.apply_train is not None
    custom_loss = personal is not None and personal.loss is not None
    if dp_sgd is not None and task == "survival":
        raise ValueError(
            "dp_sgd needs a per-example loss; the Cox partial likelihood of task='survival' "
            "couples the records of a batch"
        )
    if dp_sgd is not None and (stateful or personal is not None):
        raise ValueError(
            "dp_sgd needs per-example gradients of one model: it does not compose with batch "
            "norm (the statistics couple a batch's records) or with personalized algorithms"
        )
    if stateful and custom_loss:
        raise ValueError(
            f"personalized algorithm {personal.name!r} trains two models per client and does "
            f"not support models with batch statistics ({model.name!r}); use a model without "
            "batch norm, or FedBN / FedPer / FedRep"
        )


def _objective(model: Model, loss_fn, regularizer, personal):
    """``data_loss(params, xb, yb, mb, key)`` and the local objective ``batch_loss(params, xb,
    yb, mb, key, global_params, client_state, server_state) -> (total, (data, stats))``: the
    data loss (a personalized algorithm's own loss, batch statistics for batch-norm models)
    plus the algorithm's regularizer."""
    stateful = model.apply_train is not None
    custom_loss = personal is not None and personal.loss is not None

    def data_loss(params, xb, yb, mb, key):
        return loss_fn(model.apply(params, xb, train=True, key=key), yb, mb)

    def batch_loss(params, xb, yb, mb, key, global_params, client_state, server_state):
        stats = ()
        if stateful:
            out, stats = model.apply_train(params, xb, mb, key)
            total = data = loss_fn(out, yb, mb)
        elif custom_loss:
            f = lambda p: data_loss(p, xb, yb, mb, key)  # noqa: E731
            total, data = personal.loss(params, f, global_params)
        else:
            total = data = data_loss(params, xb, yb, mb, key)
        if regularizer is not None:
            total = total + regularizer(params, global_params, client_state, server_state)
        return total, (data, stats)

    return data_loss, batch_loss


def _private_grad(model: Model, loss_fn, dp_sgd: DPSGD, regularizer):
    """DP-SGD's gradient of one step (Abadi et al. 2016, Alg. 1):
    ``g = (sum_i clip(g_i) + N(0, s^2 C^2 I)) / (q n)`` over the sampled records, plus the
    regularizer's gradient (which reads no data) unclipped."""

    def private_grad(params, x, y, sampled, denom, key, global_params, client_state, server_state):
        k_examples, k_noise = jax.random.split(key)

        def example_loss(p, xi, yi, ki):
            out = model.apply(p, xi[None], train=True, key=ki)
            return loss_fn(out, yi[None], jnp.ones((1,), bool))

        keys = jax.random.split(k_examples, x.shape[0])
        losses, grads = jax.vmap(jax.value_and_grad(example_loss), in_axes=(None, 0, 0, 0))(
            params, x, y, keys
        )
        clipped, _ = jax.vmap(lambda g: clip_by_norm(g, dp_sgd.clip_norm))(grads)
        w = sampled.astype(jnp.float32)
        total = jax.tree.map(lambda g: jnp.tensordot(w, g, axes=1), clipped)
        noise = gaussian_noise_like(k_noise, total, dp_sgd.noise_multiplier * dp_sgd.clip_norm)
        grads = jax.tree.map(lambda t, z: (t + z) / denom, total, noise)
        if regularizer is not None:
            reg = jax.grad(regularizer)(params, global_params, client_state, server_state)
            grads = jax.tree.map(jnp.add, grads, reg)
        return grads, masked_mean(losses, sampled)

    return private_grad


def _gradients(plan, dp_sgd, private_grad, grad_fn, x, y, n, k_batches, k_steps, global_params,
               client_state, server_state):  # fmt: skip
    """``(idx, mask)`` of the minibatches and ``g(params, t, idx_t, mask_t) -> (grads,
    loss, batch statistics)`` of local step ``t`` (DP-SGD's Poisson-sampled private gradient,
    or the objective's gradient on the step's minibatch)."""
    n_max = x.shape[0]
    if dp_sgd is None:
        idx, mask = batch_indices(k_batches, n, n_max, plan)
    else:  # Poisson masks are drawn per step below
        idx = mask = jnp.zeros((plan.max_steps, 1), jnp.int32)
        rate = jnp.minimum(1.0, dp_sgd.batch_size / jnp.maximum(n, 1).astype(jnp.float32))
        real = jnp.arange(n_max) < n

    def g(params, t, idx_t, mask_t):
        k_t = jax.random.fold_in(k_steps, t)
        if dp_sgd is not None:
            u = jax.random.uniform(jax.random.fold_in(k_batches, t), (n_max,))
            sampled = real & (u < rate)
            grads, loss = private_grad(params, x, y, sampled, rate * jnp.maximum(n, 1), k_t,
                                       global_params, client_state, server_state)  # fmt: skip
            return grads, loss, ()
        xb, yb = (x, y) if plan.full_batch else (x[idx_t], y[idx_t])
        grads, (loss, stats) = grad_fn(
            params, xb, yb, mask_t, k_t, global_params, client_state, server_state
        )
        return grads, loss, stats

    return idx, mask, g


def _local_step(g, steps, global_params, optimizer, personal, stateful: bool):
    """One masked local step of the ``lax.scan``: optimizer, frozen leaves (FedRep), batch
    statistics, projection; a no-op past the client's ``steps``."""

    def step(carry, inputs):
        params, opt_state, loss_sum = carry
        t, idx_t, mask_t = inputs
        grads, loss, stats = g(params, t, idx_t, mask_t)
        frozen = None
        if personal is not None and personal.trainable is not None:
            frozen = personal.trainable(params, t, steps)  # 1.0: trained at step t, 0.0: frozen
            grads = jax.tree.map(lambda g, m: g * m, grads, frozen)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        if frozen is not None:
            updates = jax.tree.map(lambda u, m: u * m, updates, frozen)
        new_params = optax.apply_updates(params, updates)
        if stateful:  # running statistics follow the batch, not the gradient
            new_params = {**new_params, "batch_stats": stats}
        if personal is not None and personal.project is not None:
            new_params = personal.project(new_params, global_params)
        active = t < steps
        keep = lambda new, old: jnp.where(active, new, old)  # noqa: E731
        params = jax.tree.map(keep, new_params, params)
        opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        return (params, opt_state, loss_sum + jnp.where(active, loss, 0.0)), None

    return step


def make_client_update(
    model: Model,
    task: str,
    optimizer: optax.GradientTransformation,
    plan: LocalPlan,
    regularizer: Regularizer | None = None,
    finalize: Callable[[ClientContext], tuple[PyTree, PyTree]] | None = None,
    loss_options: dict | None = None,
    dp_sgd: DPSGD | None = None,
    personal: Any | None = None,
):
    """Builds the local update of ONE client; the round lifts it with ``jax.vmap``.

    ``client_update(global_params, x[N,...], y[N], n, key, client_state=(), server_state=(),
    budget=None) -> ClientOutput``. The local objective is the masked mean example loss of the
    batch plus ``regularizer(params, global_params, client_state, server_state)`` (FedProx's
    proximal term, SCAFFOLD's correction, FedDyn's linear and quadratic terms). The client
    takes ``min(num_local_steps(n), budget)`` steps; later steps are masked no-ops. Batches
    come from ``batch_indices(split(key)[0], ...)``. ``finalize(ClientContext) ->
    (client_state, upload)`` computes the new persistent state and any extra upload.

    With ``dp_sgd`` (:class:`DPSGD`) each step's data gradient is the privatized
    Poisson-sampled, per-example clipped and noised sum over the client's records (per-example
    gradients by ``vmap(grad)`` over all ``N`` padded records, masked; exact Poisson sampling,
    no cap); the regularizer's gradient, which reads no data, is added unclipped.

    With ``personal`` (:class:`fljax.algorithms.Personal`) the client trains the variable
    ``z = personal.start(global_params, client_state)`` (its assembled model, or the pair of
    global and personal models) on ``personal.loss`` (the data loss of ``z`` when ``None``),
    only the leaves ``personal.trainable(z, t, steps)`` marks at step ``t``, then
    ``personal.project(z, global_params)``; afterwards ``personal.finish`` gives the model
    whose delta is sent and the new client state.

    Models with batch statistics (``model.apply_train``) train in batch-statistics mode and
    their ``batch_stats`` leaves are replaced by the updated running averages after each step.
    """
    loss_fn = batch_loss_fn(task, **(loss_options or {}))
    stateful = model.apply_train is not None
    _check_local_options(model, task, dp_sgd, personal)
    data_loss, batch_loss = _objective(model, loss_fn, regularizer, personal)
    grad_fn = jax.grad(batch_loss, has_aux=True)
    private_grad = None if dp_sgd is None else _private_grad(model, loss_fn, dp_sgd, regularizer)

    def client_update(global_params, x, y, n, key, client_state=(), server_state=(), budget=None):
        k_batches, k_steps = jax.random.split(key)
        idx, mask, g = _gradients(plan, dp_sgd, private_grad, grad_fn, x, y, n, k_batches,
                                  k_steps, global_params, client_state, server_state)  # fmt: skip
        steps = num_local_steps(n, plan)
        if budget is not None:
            steps = jnp.minimum(steps, budget).astype(jnp.int32)
        start = global_params
        if personal is not None:
            start = personal.start(global_params, client_state)
        init = (start, optimizer.init(start), jnp.zeros((), jnp.float32))
        (params, _, loss_sum), _ = jax.lax.scan(
            _local_step(g, steps, global_params, optimizer, personal, stateful),
            init,
            (jnp.arange(plan.max_steps), idx, mask),
        )
        new_state, upload = client_state, ()
        if personal is not None:
            params, new_state = personal.finish(params, global_params, client_state)
        delta = jax.tree.map(jnp.subtract, params, global_params)
        train_loss = loss_sum / jnp.maximum(steps, 1).astype(jnp.float32)
        if finalize is not None:
            full_mask = jnp.arange(x.shape[0]) < n

            def full_grad(p):
                return jax.grad(data_loss)(p, x, y, full_mask, k_steps)

            ctx = ClientContext(
                global_params, params, delta, client_state, server_state, steps, full_grad
            )
            new_state, upload = finalize(ctx)
        return ClientOutput(delta, new_state, upload, train_loss, steps)

    return client_update


def evaluate_fn(
    model: Model,
    task: str,
    per_client_params: bool = False,
    metrics: tuple[str, ...] | None = None,
    loss_options: dict | None = None,
):
    """Builds ``evaluate(params, x[C,M,...], y[C,M,...], n[C]) -> {name: [C]}`` (vmapped over C).

    Reports the task's ``loss`` and each of ``metrics`` (names from :mod:`fljax.metrics`; the
    task's defaults when ``None``). With ``per_client_params`` the params are stacked
    ``[C, ...]`` and client ``c`` is scored with its own model (local-only training,
    personalization). Undefined metrics (no examples, one class) are NaN.
    """
    from fljax import metrics as M

    loss_fn = batch_loss_fn(task, **(loss_options or {}))
    names = M.DEFAULT_METRICS[task] if metrics is None else tuple(metrics)
    fns = {name: M.registry(task)[name] for name in names}

    def one(params, x, y, n):
        out = model.apply(params, x, train=False)
        mask = jnp.arange(x.shape[0]) < n
        result = {"loss": jnp.where(n > 0, loss_fn(out, y, mask), jnp.nan)}
        for name, fn in fns.items():
            result[name] = fn(out, y, mask)
        return result

    return jax.vmap(one, in_axes=(0 if per_client_params else None, 0, 0, 0))
