"""Summaries and a picture of a federation: sizes and label mix per client."""

from __future__ import annotations

import numpy as np

from fljax.data._federated import FederatedData


def describe(fed: FederatedData) -> dict:
    """Per-client sizes and label mix, and federation-level skew figures.

    Returns a dict: ``clients`` (one row per client: name, train/test sizes, label counts or
    target mean / event rate), ``total_train``, ``total_test``, ``size_cv`` (coefficient of
    variation of training sizes) and, for classification, ``label_skew`` (mean total-variation
    distance between each client's label distribution and the pooled one).
    """
    fed.whole("describe")
    tr, te = fed.train, fed.test
    rows = []
    pooled = None
    if fed.task == "classification":
        pooled = np.bincount(tr.y[tr.mask], minlength=fed.num_classes).astype(float)
        pooled /= pooled.sum()
    tvs = []
    for c, name in enumerate(fed.client_names):
        n = int(tr.num_examples[c])
        row = {"client": name, "train": n, "test": int(te.num_examples[c])}
        y = tr.y[c, :n]
        if fed.task == "classification":
            counts = np.bincount(y, minlength=fed.num_classes)
            row["labels"] = counts.tolist()
            if n:
                tvs.append(0.5 * np.abs(counts / n - pooled).sum())
        elif fed.task == "survival":
            row["event_rate"] = float(y[:, 1].mean()) if n else None
        else:
            row["target_mean"] = float(y.mean()) if n else None
        rows.append(row)
    sizes = tr.num_examples.astype(float)
    out = {
        "name": fed.name,
        "task": fed.task,
        "num_clients": fed.num_clients,
        "clients": rows,
        "total_train": int(sizes.sum()),
        "total_test": int(te.num_examples.sum()),
        "size_cv": float(sizes.std() / sizes.mean()),
    }
    if tvs:
        out["label_skew"] = float(np.mean(tvs))
    return out


def plot_federation(fed: FederatedData, max_clients: int = 50):
    """Bar chart of training sizes per client, stacked by label (classification), as a
    matplotlib Figure (the first ``max_clients`` clients)."""
    fed.whole("plot_federation")
    import matplotlib.pyplot as plt

    from fljax._plot import bar_styles, legend_outside

    info = describe(fed)
    rows = info["clients"][:max_clients]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(rows) + 2), 4))
    idx = np.arange(len(rows))
    if fed.task == "classification":
        counts = np.array([r["labels"] for r in rows])
        bottom = np.zeros(len(rows))
        for k, style in enumerate(bar_styles(counts.shape[1])):
            ax.bar(idx, counts[:, k], bottom=bottom, label=f"class {k}", **style)
            bottom += counts[:, k]
        legend_outside(ax, title="label")
    else:
        ax.bar(idx, [r["train"] for r in rows])
    ax.set_xticks(idx, [str(r["client"]) for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("client")
    ax.set_ylabel("training examples (count)")
    ax.set_title(
        f"{fed.name}: {fed.num_clients} clients, size CV {info['size_cv']:.2f}"
        + (f", label skew {info['label_skew']:.2f}" if "label_skew" in info else "")
    )
    fig.tight_layout()
    return fig
