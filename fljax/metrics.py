"""Metrics as plain JAX functions of arrays, vmappable over clients.

Every metric takes an optional ``mask`` of real (non-padded) examples and returns a scalar.
Rank metrics are exact on ties (average ranks, tie groups as scikit-learn and lifelines
treat them). A metric that is undefined for a client (AUROC with one class present, C-index
with no comparable pair) returns NaN; :func:`summarize` leaves such clients out of the
aggregates and reports how many there were.

Classification metrics take ``logits[N, K]`` (scores for AUROC/AUPRC: the positive-class
margin ``logits[:, 1] - logits[:, 0]`` of a binary model); survival metrics a risk score
``risk[N]`` (higher = earlier event) and ``y[N, 2] = (time, event)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _mask(n: int, mask):
    return jnp.ones((n,), bool) if mask is None else mask.astype(bool)


def _safe_div(a, b):
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), jnp.nan)


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of ``argmax(logits) == labels`` over masked examples (NaN if none).

    Examples:
        >>> import jax.numpy as jnp
        >>> float(accuracy(jnp.array([[2., 1.], [0., 3.]]), jnp.array([0, 0])))
        0.5
    """
    m = _mask(labels.shape[0], mask).astype(jnp.float32)
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _safe_div(jnp.sum(hit * m), jnp.sum(m))


def balanced_accuracy(logits, labels, mask=None) -> jax.Array:
    """Mean per-class recall over the classes present in ``labels`` (scikit-learn's
    ``balanced_accuracy_score``)."""
    k = logits.shape[-1]
    m = _mask(labels.shape[0], mask)
    pred = jnp.argmax(logits, axis=-1)
    onehot = (labels[:, None] == jnp.arange(k)[None, :]) & m[:, None]
    count = onehot.sum(0)
    hits = (onehot & (pred[:, None] == labels[:, None])).sum(0)
    present = count > 0
    recall = jnp.where(present, hits / jnp.maximum(count, 1), 0.0)
    return _safe_div(jnp.sum(recall), jnp.sum(present))


def sensitivity(logits, labels, mask=None) -> jax.Array:
    """Recall of class 1 (true-positive rate) of a binary classifier; NaN with no positives."""
    m = _mask(labels.shape[0], mask)
    pred = jnp.argmax(logits, axis=-1)
    pos = m & (labels == 1)
    return _safe_div(jnp.sum(pos & (pred == 1)), jnp.sum(pos))


def specificity(logits, labels, mask=None) -> jax.Array:
    """Recall of class 0 (true-negative rate) of a binary classifier; NaN with no negatives."""
    m = _mask(labels.shape[0], mask)
    pred = jnp.argmax(logits, axis=-1)
    neg = m & (labels == 0)
    return _safe_div(jnp.sum(neg & (pred == 0)), jnp.sum(neg))


def binary_scores(logits: jax.Array) -> jax.Array:
    """Positive-class score of binary logits ``[N, 2]`` (a monotone map of P(y = 1))."""
    shape = jnp.shape(logits)
    if len(shape) < 2 or shape[-1] != 2:
        raise ValueError(f"binary metrics take the model's logits [N, 2], got shape {shape}; "
                         "for one score per example (a probability or a logit of class 1) "
                         "use fljax.metrics.auroc_scores / auprc_scores(scores, "
                         "labels)")  # fmt: skip
    return logits[..., 1] - logits[..., 0]


def auroc_scores(scores: jax.Array, labels: jax.Array, mask=None) -> jax.Array:
    """Area under the ROC curve of ``scores[N]`` for ``labels in {0, 1}``, exact on ties:
    the Mann-Whitney statistic with average ranks (scikit-learn's ``roc_auc_score``)."""
    m = _mask(labels.shape[0], mask)
    pos = m & (labels == 1)
    neg = m & (labels == 0)
    n_pos, n_neg = jnp.sum(pos), jnp.sum(neg)
    s = jnp.where(m, scores, jnp.inf)
    srt = jnp.sort(s)
    less = jnp.searchsorted(srt, scores, side="left")
    leq = jnp.searchsorted(srt, scores, side="right")
    rank = (less + leq + 1) / 2.0  # 1-based average rank among the real examples
    u = jnp.sum(jnp.where(pos, rank, 0.0)) - n_pos * (n_pos + 1) / 2.0
    return _safe_div(u, n_pos * n_neg * 1.0)


def auroc(logits, labels, mask=None) -> jax.Array:
    """AUROC of a binary classifier from its logits ``[N, 2]``."""
    return auroc_scores(binary_scores(logits), labels, mask)


def auprc_scores(scores: jax.Array, labels: jax.Array, mask=None) -> jax.Array:
    r"""Average precision :math:`\sum_t (R_t - R_{t-1}) P_t` over distinct score thresholds
    (scikit-learn's ``average_precision_score``): each positive contributes the precision at
    its own score's threshold, tie groups sharing one threshold."""
    m = _mask(labels.shape[0], mask)
    pos = m & (labels == 1)
    n_pos = jnp.sum(pos)
    all_sorted = jnp.sort(jnp.where(m, scores, -jnp.inf))
    pos_sorted = jnp.sort(jnp.where(pos, scores, -jnp.inf))
    n = scores.shape[0]
    at_or_above = n - jnp.searchsorted(all_sorted, scores, side="left")
    tp_at_or_above = n - jnp.searchsorted(pos_sorted, scores, side="left")
    precision = tp_at_or_above / jnp.maximum(at_or_above, 1)
    return _safe_div(jnp.sum(jnp.where(pos, precision, 0.0)), n_pos * 1.0)


def auprc(logits, labels, mask=None) -> jax.Array:
    """AUPRC (average precision) of a binary classifier from its logits ``[N, 2]``."""
    return auprc_scores(binary_scores(logits), labels, mask)


def ece(logits, labels, mask=None, num_bins: int = 15) -> jax.Array:
    r"""Expected calibration error :math:`\sum_b \frac{|B_b|}{n}|\mathrm{acc}(B_b) -
    \mathrm{conf}(B_b)|` of the top-class confidence, ``num_bins`` equal-width bins
    ``(b/M, (b+1)/M]``.

    References:
        Guo et al. (2017), "On Calibration of Modern Neural Networks", ICML, Eq. (3).
    """
    m = _mask(labels.shape[0], mask).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    conf = jnp.max(probs, axis=-1)
    hit = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
    b = jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    onehot = (b[:, None] == jnp.arange(num_bins)[None, :]) * m[:, None]
    count = onehot.sum(0)
    gap = jnp.abs((onehot * hit[:, None]).sum(0) - (onehot * conf[:, None]).sum(0))
    return _safe_div(jnp.sum(gap), jnp.sum(count))


def cross_entropy(logits, labels, mask=None) -> jax.Array:
    """Mean softmax cross-entropy over masked examples."""
    m = _mask(labels.shape[0], mask).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _safe_div(jnp.sum(ce * m), jnp.sum(m))


def _regression_pred(predictions, targets):
    return predictions[..., 0] if predictions.ndim == targets.ndim + 1 else predictions


def mse(predictions, targets, mask=None) -> jax.Array:
    """Mean squared error; ``predictions`` may carry a trailing 1-axis."""
    m = _mask(targets.shape[0], mask).astype(jnp.float32)
    err = jnp.square(_regression_pred(predictions, targets) - targets)
    return _safe_div(jnp.sum(err * m), jnp.sum(m))


def mae(predictions, targets, mask=None) -> jax.Array:
    """Mean absolute error; ``predictions`` may carry a trailing 1-axis."""
    m = _mask(targets.shape[0], mask).astype(jnp.float32)
    err = jnp.abs(_regression_pred(predictions, targets) - targets)
    return _safe_div(jnp.sum(err * m), jnp.sum(m))


def c_index(risk: jax.Array, y: jax.Array, mask=None) -> jax.Array:
    r"""Harrell's concordance index of ``risk[N]`` (or ``[N, 1]``) for ``y[N] = (time, event)``.

    A pair (i, j) is comparable when subject i has an event and either ``t_i < t_j`` or
    ``t_i == t_j`` with j censored (a censoring at the event time counts as later); it counts
    1 when i has the higher risk, 1/2 on tied risks. Two events at the same time are not
    comparable. This is lifelines' ``concordance_index`` with ``-risk`` as the prediction.

    References:
        Harrell et al. (1982), "Evaluating the Yield of Medical Tests", JAMA.
    """
    if risk.ndim == 2:
        risk = risk[:, 0]
    m = _mask(risk.shape[0], mask)
    t, e = y[:, 0], y[:, 1] > 0.5
    later = (t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :])
    earlier = later & e[:, None] & m[:, None] & m[None, :]
    conc = (risk[:, None] > risk[None, :]).astype(jnp.float32)
    conc = conc + 0.5 * (risk[:, None] == risk[None, :])
    return _safe_div(jnp.sum(earlier * conc), jnp.sum(earlier) * 1.0)


def cox_loss(risk: jax.Array, y: jax.Array, mask=None, normalize: str = "events") -> jax.Array:
    r"""Negative Cox partial log-likelihood with Breslow ties, averaged over events:
    :math:`-\frac{1}{n_e}\sum_{i: e_i = 1}\big(\eta_i - \log\sum_{j: t_j \ge t_i} e^{\eta_j}\big)`
    (``normalize="events"``), or divided by the number of examples instead
    (``normalize="batch"``, FLamby's ``BaselineLoss`` for Fed-TCGA-BRCA).

    References:
        Cox (1972), "Regression Models and Life-Tables", JRSS B; Breslow (1974).
    """
    if risk.ndim == 2:
        risk = risk[:, 0]
    m = _mask(risk.shape[0], mask)
    t, e = y[:, 0], (y[:, 1] > 0.5) & m
    at_risk = (t[None, :] >= t[:, None]) & m[None, :]  # [i, j]: j in the risk set of i
    log_denominator = jax.nn.logsumexp(jnp.where(at_risk, risk[None, :], -jnp.inf), axis=1)
    terms = jnp.where(e, risk - log_denominator, 0.0)
    denominator = jnp.sum(e) if normalize == "events" else jnp.sum(m)
    return jnp.where(jnp.sum(e) > 0, -jnp.sum(terms) / jnp.maximum(denominator, 1), 0.0)


CLASSIFICATION: dict[str, Callable] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "sensitivity": sensitivity,
    "specificity": specificity,
    "auroc": auroc,
    "auprc": auprc,
    "ece": ece,
}
"""Metric name -> function for classification tasks."""
REGRESSION: dict[str, Callable] = {"mse": mse, "mae": mae}
"""Metric name -> function for regression tasks."""
SURVIVAL: dict[str, Callable] = {"c_index": c_index}
"""Metric name -> function for survival tasks."""
BINARY_ONLY = ("sensitivity", "specificity", "auroc", "auprc")
"""Metrics defined for binary classification only."""
HIGHER_IS_BETTER = {
    "loss": False,
    "accuracy": True,
    "balanced_accuracy": True,
    "sensitivity": True,
    "specificity": True,
    "auroc": True,
    "auprc": True,
    "ece": False,
    "mse": False,
    "mae": False,
    "c_index": True,
}
"""Metric name -> whether a higher value is better (for worst-site and best-setting choices)."""
DEFAULT_METRICS = {
    "classification": ("accuracy",),
    "regression": ("mse",),
    "survival": ("c_index",),
}
"""Task -> the metrics a dataset reports unless it names its own."""


def registry(task: str) -> dict[str, Callable]:
    """The metrics available for ``task``."""
    return {"classification": CLASSIFICATION, "regression": REGRESSION, "survival": SURVIVAL}[task]


def check_metrics(task: str, names, num_classes: int) -> tuple[str, ...]:
    """Validates metric names for a task (binary-only metrics need ``num_classes == 2``)."""
    available = registry(task)
    names = tuple(names)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"unknown metrics {unknown} for task={task!r}; choose from {sorted(available)}"
        )
    if task == "classification" and num_classes != 2:
        binary = [n for n in names if n in BINARY_ONLY]
        if binary:
            raise ValueError(f"metrics {binary} need a binary task, got {num_classes} classes")
    return names


def summarize(values, counts, higher_is_better: bool = True) -> dict:
    """Aggregates per-client values: example-weighted mean (``""``), client mean, std, worst
    client, and ``_undefined_clients`` (clients whose metric is NaN or who have no examples,
    left out of every figure; all figures are None when no client is defined)."""
    values = np.asarray(values, np.float64)
    counts = np.asarray(counts, np.float64)
    keep = (counts > 0) & np.isfinite(values)
    out = {"_undefined_clients": int((~keep).sum())}
    if not keep.any():
        return {"": None, "_client_mean": None, "_client_std": None, "_worst": None, **out}
    v, c = values[keep], counts[keep]
    return {
        "": float(np.sum(v * c) / np.sum(c)),
        "_client_mean": float(v.mean()),
        "_client_std": float(v.std()),
        "_worst": float(v.min() if higher_is_better else v.max()),
        **out,
    }
