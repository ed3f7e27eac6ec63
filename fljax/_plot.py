"""House style of fljax's figures: distinct colour and marker per series, the legend outside
the data, readable metric and override names."""

from __future__ import annotations

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
NAMES = {"auroc": "AUROC", "auprc": "AUPRC", "c_index": "C-index", "ece": "ECE", "mse": "MSE",
         "mae": "MAE"}  # fmt: skip
SUFFIXES = {"_client_mean": " (client mean)", "_client_std": " (client std)",
            "_worst": " (worst client)"}  # fmt: skip


def styles(n: int) -> list[dict]:
    """``n`` distinct ``{color, marker}`` pairs: tab10 colours (tab20 beyond 10 series), each
    with its own marker, so no two series look alike even in grey."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [{"color": cmap(i % cmap.N), "marker": MARKERS[i % len(MARKERS)]} for i in range(n)]


def legend_outside(ax, title: str | None = None):
    """The legend to the right of the axes, never over the data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     fontsize=8, title=title)  # fmt: skip


def metric_label(name: str) -> str:
    """``test_auroc_client_mean`` -> ``test AUROC (client mean)``."""
    suffix = next((s for s in SUFFIXES if name.endswith(s)), "")
    base = name.removesuffix(suffix)
    split, _, metric = base.partition("_") if base.startswith(("test_", "train_")) else (
        "", "", base)
    words = NAMES.get(metric, metric.replace("_", " "))
    return f"{split} {words}".strip() + SUFFIXES.get(suffix, "")


def setting_label(pairs) -> str:
    """Overrides ``[("algorithm.client_lr", "0.05")]`` as ``client_lr 0.05``."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in pairs)
