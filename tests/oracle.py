"""NumPy reference implementations (float64) used by the oracle tests."""

import numpy as np


def softmax_regression_grad(w, b, x, y, num_classes):
    """Gradient of the mean softmax cross-entropy of logits ``x @ w + b`` over the rows given."""
    z = x @ w + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    g = (p - np.eye(num_classes)[y]) / len(x)
    return x.T @ g, g.sum(0)


def logistic_params(params):
    d = params["Dense_0"]
    return np.asarray(d["kernel"], np.float64), np.asarray(d["bias"], np.float64)


# ---- a tiny NumPy FL simulator for softmax regression, full-batch local steps ----------------


class NpFed:
    """Per-client float64 arrays of a FederatedData, and softmax-regression helpers."""

    def __init__(self, fed, num_classes):
        self.k = num_classes
        self.x = [
            fed.train.x[c, : fed.train.num_examples[c]].astype(np.float64)
            for c in range(fed.num_clients)
        ]
        self.y = [fed.train.y[c, : fed.train.num_examples[c]] for c in range(fed.num_clients)]
        self.n = np.array([len(v) for v in self.y], np.float64)

    def grad(self, c, p):
        gw, gb = softmax_regression_grad(p[0], p[1], self.x[c], self.y[c], self.k)
        return (gw, gb)


def add(a, b, s=1.0):
    return tuple(x + s * y for x, y in zip(a, b, strict=True))


def scale(a, s):
    return tuple(s * x for x in a)


def zeros_like(a):
    return tuple(np.zeros_like(x) for x in a)


def wmean(trees, w):
    w = np.asarray(w, np.float64) / np.sum(w)
    return tuple(
        sum(wi * t[j] for wi, t in zip(w, trees, strict=True)) for j in range(len(trees[0]))
    )


def local_gd(p0, steps, lr, grad):
    p = p0
    for _ in range(steps):
        p = add(p, grad(p), -lr)
    return p
