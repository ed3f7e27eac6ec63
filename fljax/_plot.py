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


def legend_below(ax, ncol: int = 2):
    """The legend under the axes (below its x label), for panels side by side."""
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), borderaxespad=0.0,
                     fontsize=8, ncol=ncol)  # fmt: skip


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


def series_figure(series: dict, title: str, xlabel: str, ylabel: str, *, dashed=(),
                  xscale: str = "linear", hlines=(), figsize=(10, 5)):  # fmt: skip
    """One line per named series ``{name: (x, y)}`` in its own colour and marker (dashed for
    the names in ``dashed``), grey reference lines ``hlines = [(y, label)]``, the legend
    outside (a matplotlib Figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    for (name, (x, y)), style in zip(series.items(), styles(len(series)), strict=True):
        ax.plot(x, y, label=name, ls="--" if name in dashed else "-", markersize=4, **style)
    for y, label in hlines:
        ax.axhline(y, color="grey", lw=0.8, ls="--", label=label)
    ax.set_xscale(xscale)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    legend_outside(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def bar_styles(n: int) -> list[dict]:
    """``n`` distinct ``{color, hatch}`` pairs for bars (a hatch repeats only with a new
    colour)."""
    hatches = ("", "//", "..", "xx", "\\\\")
    return [{"color": s["color"], "hatch": hatches[(i // 10) % len(hatches)]}
            for i, s in enumerate(styles(n))]  # fmt: skip


def _is_colorbar(ax) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def _series(ax) -> list[tuple[str, tuple]]:
    """``(label, look)`` of each labelled line, bar group and error-bar series of ``ax``."""
    from matplotlib.colors import to_rgba

    out = []
    for line in ax.get_lines():
        label = line.get_label()
        if not label.startswith("_"):
            look = (to_rgba(line.get_color()), line.get_marker(), line.get_linestyle())
            out.append((label, look))
    for container in ax.containers:
        label = container.get_label()
        if not label or label.startswith("_"):
            continue
        patches = getattr(container, "patches", None)
        if patches:  # bars
            out.append((label, (to_rgba(patches[0].get_facecolor()), patches[0].get_hatch())))
        elif getattr(container, "lines", None) and container.lines[0] is not None:  # errorbar
            line = container.lines[0]
            out.append((label, (to_rgba(line.get_color()), line.get_marker(),
                                line.get_linestyle())))  # fmt: skip
    return out


def style_problems(fig) -> list[str]:
    """What keeps ``fig`` from the house style: an axes without a title (its own or the
    figure's), an unlabelled axis or colour bar, two series that look alike, several series
    of which one is named in no legend of the figure, a legend over any axes' data area.
    Empty when the figure conforms."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible() and not _is_colorbar(ax)]
    areas = [ax.get_window_extent(renderer) for ax in axes]
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    legends = [(f"legend of {ax.get_title() or i}", ax.get_legend()) for i, ax in enumerate(axes)]
    legends += [("figure legend", lg) for lg in fig.legends]
    named = {t.get_text() for _, lg in legends if lg is not None for t in lg.get_texts()}
    problems = []
    for i, ax in enumerate(axes):
        name = f"axes {i} ({ax.get_title()!r})"
        if not (ax.get_title() or suptitle):
            problems.append(f"axes {i}: no title")
        for axis in ("x", "y"):
            if not getattr(ax, f"get_{axis}label")():
                problems.append(f"{name}: no {axis} label")
        series = _series(ax)
        looks = [look for _, look in series]
        for label, look in series:
            if looks.count(look) > 1:
                problems.append(f"{name}: series {label!r} looks like another")
        unnamed = [label for label, _ in series if label not in named]
        if len(series) > 1 and unnamed:
            problems.append(f"{name}: series {unnamed} in no legend")
    for ax in fig.axes:
        if _is_colorbar(ax) and not (ax.get_ylabel() or ax.get_xlabel()):
            problems.append("colour bar without a label")
    for name, legend in legends:
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        for ax, area in zip(axes, areas, strict=True):
            if box.overlaps(area):
                problems.append(f"{name} covers the data of axes {ax.get_title()!r}")
    return sorted(set(problems))
