"""Measured leakage: membership inference and gradient inversion against fljax models.

- :func:`loss_threshold_mia` (Yeom et al. 2018): members have lower loss under the model.
- :func:`calibrated_loss_mia` (Watson et al. 2022): the loss drop between a reference model
  and the target; against one client's update, the broadcast model is the reference.
- :func:`gradient_alignment_mia`: a white-box attack by a server that sees ONE client's update
  (in the spirit of Nasr, Shokri and Houmansadr 2019): a record whose loss gradient at the
  broadcast model points along the client's update ``-delta`` was probably trained on.
- :func:`invert_gradients` (Geiping et al. 2020, "Inverting Gradients", Eq. 4; DLG of Zhu et
  al. 2019 with the cosine distance): reconstructs a client's inputs from its update.

Attack strength is reported with standard metrics: AUC and advantage ``max(TPR - FPR)`` for
membership, and MSE / PSNR for reconstruction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from fljax.client import batch_loss_fn
from fljax.metrics import auroc_scores
from fljax.models import Model

PyTree = Any


class AttackResult(NamedTuple):
    """Membership-inference result: ``auc`` (0.5 = chance) and ``advantage`` = max TPR - FPR."""

    auc: float
    advantage: float
    member_scores: np.ndarray
    nonmember_scores: np.ndarray


def membership_metrics(member_scores, nonmember_scores) -> AttackResult:
    """AUC (Mann-Whitney, ties averaged) and advantage of ``score > t`` meaning "member"."""
    m = np.asarray(member_scores, np.float64)
    o = np.asarray(nonmember_scores, np.float64)
    scores = np.concatenate([m, o])
    labels = np.concatenate([np.ones(m.size, np.int32), np.zeros(o.size, np.int32)])
    auc = float(auroc_scores(jnp.asarray(scores), jnp.asarray(labels)))
    thresholds = np.unique(scores)
    tpr = (m[None, :] >= thresholds[:, None]).mean(axis=1)
    fpr = (o[None, :] >= thresholds[:, None]).mean(axis=1)
    advantage = float(max(0.0, np.max(tpr - fpr)))
    return AttackResult(auc, advantage, m, o)


def _example_losses(model: Model, task: str, params, x, y):
    loss_fn = batch_loss_fn(task)

    def one(xi, yi):
        return loss_fn(model.apply(params, xi[None], train=False), yi[None], jnp.ones((1,), bool))

    return jax.vmap(one)(x, y)


def loss_threshold_mia(
    model: Model, params: PyTree, members: tuple, nonmembers: tuple, task: str = "classification"
) -> AttackResult:
    """Yeom et al. (2018): score each record by its negative loss under ``params``.

    ``members`` and ``nonmembers`` are ``(x, y)`` arrays of real (unpadded) records.
    """
    lm = _example_losses(model, task, params, *members)
    lo = _example_losses(model, task, params, *nonmembers)
    return membership_metrics(-np.asarray(lm), -np.asarray(lo))


def calibrated_loss_mia(
    model: Model,
    reference_params: PyTree,
    target_params: PyTree,
    members: tuple,
    nonmembers: tuple,
    task: str = "classification",
) -> AttackResult:
    r"""Difficulty-calibrated loss attack (Watson et al. 2022, ICLR): score each record by
    :math:`\ell(x; w_{ref}) - \ell(x; w_{target})`, how much training lowered its loss.

    Against one client's update the server has the perfect reference: the global model it
    broadcast (``reference_params``) and the client's model ``global + delta``
    (``target_params``); members are that client's training records.
    """
    ref = (
        _example_losses(model, task, reference_params, *members),
        _example_losses(model, task, reference_params, *nonmembers),
    )
    tgt = (
        _example_losses(model, task, target_params, *members),
        _example_losses(model, task, target_params, *nonmembers),
    )
    return membership_metrics(np.asarray(ref[0] - tgt[0]), np.asarray(ref[1] - tgt[1]))


def gradient_alignment_mia(
    model: Model,
    global_params: PyTree,
    delta: PyTree,
    members: tuple,
    nonmembers: tuple,
    task: str = "classification",
) -> AttackResult:
    r"""Score each record by :math:`\cos(-\nabla_w \ell(x, y; w_{global}), \Delta)`.

    ``delta`` is one client's update (``w_local - w_global``) as the server receives it;
    members are that client's training records.
    """
    loss_fn = batch_loss_fn(task)
    direction, _ = ravel_pytree(delta)
    direction = direction / jnp.maximum(jnp.linalg.norm(direction), 1e-30)

    def score(xi, yi):
        def loss(p):
            return loss_fn(model.apply(p, xi[None], train=False), yi[None], jnp.ones((1,), bool))

        g, _ = ravel_pytree(jax.grad(loss)(global_params))
        return -jnp.dot(g, direction) / jnp.maximum(jnp.linalg.norm(g), 1e-30)

    sm = jax.vmap(score)(*members)
    so = jax.vmap(score)(*nonmembers)
    return membership_metrics(np.asarray(sm), np.asarray(so))


def invert_gradients(
    model: Model,
    params: PyTree,
    target: PyTree,
    labels: jax.Array,
    x_shape: tuple[int, ...],
    key: jax.Array,
    *,
    steps: int = 2000,
    learning_rate: float = 0.1,
    tv_weight: float = 0.0,
) -> jax.Array:
    r"""Geiping et al. (2020), Eq. 4: inputs :math:`\hat x` minimizing
    :math:`1 - \cos(\nabla_w \ell(\hat x, y; w), g) + \alpha\,\mathrm{TV}(\hat x)` by signed Adam.

    ``target`` is the observed gradient direction (``-delta`` of a client's update is enough:
    the cosine ignores scale); ``labels`` are the batch's labels (known, or inferred from the
    last layer's bias gradient as in iDLG); ``x_shape`` is the batch's input shape
    ``(B, ...)``. ``tv_weight`` penalizes total variation over the last two axes (images).
    """
    loss_fn = batch_loss_fn("classification")
    g_target, _ = ravel_pytree(target)
    g_target = g_target / jnp.maximum(jnp.linalg.norm(g_target), 1e-30)
    mask = jnp.ones((x_shape[0],), bool)

    def objective(x_hat):
        def loss(p):
            return loss_fn(model.apply(p, x_hat, train=False), labels, mask)

        g, _ = ravel_pytree(jax.grad(loss)(params))
        cos = jnp.dot(g, g_target) / jnp.maximum(jnp.linalg.norm(g), 1e-30)
        tv = 0.0
        if tv_weight > 0 and x_hat.ndim >= 3:
            tv = jnp.mean(jnp.abs(jnp.diff(x_hat, axis=-1))) + jnp.mean(
                jnp.abs(jnp.diff(x_hat, axis=-2))
            )
        return 1.0 - cos + tv_weight * tv

    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    x0 = jax.random.normal(key, x_shape)

    def step(carry, _):
        x_hat, state = carry
        value, grad = jax.value_and_grad(objective)(x_hat)
        updates, state = opt.update(jnp.sign(grad), state, x_hat)  # signed gradients, as in §4
        return (optax.apply_updates(x_hat, updates), state), value

    (x_hat, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))((x0, opt.init(x0)))
    return x_hat


def reconstruction_error(x_true, x_hat, data_range: float | None = None) -> tuple[float, float]:
    """MSE and PSNR ``10 log10(range^2 / MSE)`` after matching reconstructed to true records
    (Hungarian assignment on per-record MSE; the batch order is not identifiable).

    ``data_range`` defaults to ``max - min`` of ``x_true``.
    """
    from scipy.optimize import linear_sum_assignment

    t = np.asarray(x_true, np.float64).reshape(len(x_true), -1)
    h = np.asarray(x_hat, np.float64).reshape(len(x_hat), -1)
    cost = ((t[:, None, :] - h[None, :, :]) ** 2).mean(axis=-1)
    rows, cols = linear_sum_assignment(cost)
    mse = float(cost[rows, cols].mean())
    r = float(t.max() - t.min()) if data_range is None else float(data_range)
    psnr = float(10 * np.log10(r**2 / max(mse, 1e-30)))
    return mse, psnr
