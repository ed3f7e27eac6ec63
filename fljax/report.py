"""``fljax-report <sweep folder>``: one table and learning curves from many run folders.

Collects every run folder under the given folder (each holds ``summary.json``,
``metrics.jsonl`` and ``.hydra/overrides.yaml``; a ``seeds=[...]`` / ``sweep=...`` run
contributes each of its ``seed_*`` sub-folders, with its swept values as overrides), groups
the runs by their overrides without the seed, and writes ``report.md`` (``mean ± std``) and
``report.csv`` (numeric columns ``<metric>_mean``, ``<metric>_std``, and ``n``) over the seeds
of each group, and ``curves.png`` / ``curves.pdf`` (the mean learning curve of each group with
a +- 1 std band). Every std is the sample standard deviation (ddof 1), as in ``fljax-run``'s
seed summary. ``--html`` also writes ``report.html``, one self-contained page for a
collaborator (``fljax/_report_html.py``); :func:`plot_sites` is the per-hospital figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from fljax._io import SUMMARY_FILE, read_metrics
from fljax._plot import legend_outside, metric_label, setting_label, styles

SEED_KEYS = ("seed", "+seed")
"""Override keys that name a run's seed: runs differing only in them form one group (mean and std
over seeds)."""


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf

    out = {}
    for item in OmegaConf.to_container(OmegaConf.load(path)) or []:
        key, _, value = str(item).partition("=")
        if not key.startswith("hydra."):
            out[key.lstrip("+~")] = value
    return out


def _run_overrides(run_dir: Path, summary: dict) -> dict[str, str]:
    """A run's overrides; a sub-run of a ``seeds`` / ``sweep`` folder takes its parent's,
    with its seed and swept values."""
    if (run_dir / ".hydra").exists() or summary.get("seed") is None:
        return _overrides(run_dir)
    out = _overrides(run_dir.parent)
    out.pop("seeds", None)
    out.pop("sweep", None)
    out["seed"] = str(summary["seed"])
    for k, v in (summary.get("sweep") or {}).items():
        out[f"algorithm.{k}"] = f"{v:g}"
    return out


def collect(root: str | Path) -> list[dict]:
    """Every finished run under ``root``: its overrides, summary and history (the top folder
    of a ``seeds`` / ``sweep`` run, which holds only their summary, is skipped)."""
    runs = []
    for summary_path in sorted(Path(root).rglob(SUMMARY_FILE)):
        run_dir = summary_path.parent
        summary = json.loads(summary_path.read_text())
        if summary.get("status") != "finished" or summary.get("seeds") is not None:
            continue
        runs.append(
            dict(
                path=run_dir,
                overrides=_run_overrides(run_dir, summary),
                summary=summary,
                history=read_metrics(run_dir),
            )
        )
    if not runs:
        raise FileNotFoundError(f"no finished fljax runs (summary.json) under {root}")
    return runs


def group(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Runs keyed by the overrides that vary across the sweep, the seed excepted (sorted
    ``(key, value)`` pairs); overrides shared by every run are constants, not groups."""
    keys = {k for run in runs for k in run["overrides"] if k not in SEED_KEYS}
    varying = sorted(k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple((k, run["overrides"].get(k, "")) for k in varying)].append(run)
    return dict(sorted(groups.items()))


def mean_std(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (ddof 1; 0.0 for one value) of the finite
    values (NaN for none): the one convention of fljax's seed summaries and reports."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def default_metrics(runs: list[dict]) -> list[str]:
    """The pooled, client-mean and worst-client figures of every test metric."""
    keys = runs[0]["summary"]["metrics"].keys()
    base = [
        k
        for k in keys
        if k.startswith("test_")
        and k.count("_") >= 1
        and not k.endswith(("_client_mean", "_client_std", "_worst", "_undefined_clients"))
    ]
    out = []
    for k in base:
        out += [k, f"{k}_client_mean", f"{k}_worst"]
    return [k for k in out if k in keys]


def table(groups: dict[tuple, list[dict]], metrics: list[str]) -> tuple[list[str], list[list]]:
    """Header and rows: one row per group, override values, ``n`` (runs), then each metric's
    mean and sample std (numbers)."""
    keys = sorted({k for g in groups for k, _ in g})
    header = [*keys, "n", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]
    rows = []
    for g, runs in groups.items():
        values = dict(g)
        row = [values.get(k, "") for k in keys] + [len(runs)]
        for m in metrics:
            row += mean_std([r["summary"]["metrics"].get(m) for r in runs])
        rows.append(row)
    return header, rows


def _markdown(header: list[str], rows: list[list], metrics: list[str]) -> str:
    """The table with each metric's mean and std as one ``mean ± std`` cell."""
    n_keys = len(header) - 2 * len(metrics)
    head = [*header[:n_keys], *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [str(c) for c in row[:n_keys]]
        cells += [f"{row[i]:.4f} ± {row[i + 1]:.4f}" for i in range(n_keys, len(row), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nstd: sample standard deviation over seeds (ddof 1).\n"


def plot_curves(groups: dict[tuple, list[dict]], metric: str):
    """Mean learning curve of ``metric`` per group, a marker at each evaluation and a
    +- 1 sample-std band; the legend outside the data (a matplotlib Figure)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for (g, runs), style in zip(groups.items(), styles(len(groups)), strict=True):
        rounds = [e["round"] for e in runs[0]["history"]]
        curves = np.array(
            [[e["metrics"].get(metric) for e in r["history"]] for r in runs], dtype=np.float64
        )
        mean = np.nanmean(curves, axis=0)
        std = np.nanstd(curves, axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
        label = setting_label(g) or "all runs"
        ax.plot(rounds, mean, label=f"{label} (n={len(runs)})", markersize=4, **style)
        ax.fill_between(rounds, mean - std, mean + std, alpha=0.2, color=style["color"])
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric_label(metric)}: mean over seeds, band = 1 sample std")
    legend_outside(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` (``test_auroc``, ``train_loss``, ...) is better."""
    from fljax.metrics import HIGHER_IS_BETTER

    return HIGHER_IS_BETTER.get(metric.removeprefix("test_").removeprefix("train_"), True)


def worst_site(values, metric: str) -> int | None:
    """The index of the worst site on ``metric`` (the lowest value, or the highest for a
    lower-is-better metric such as a loss or ECE); None when no site has a value."""
    v = np.asarray(values, np.float64)
    if not np.isfinite(v).any():
        return None
    higher = higher_is_better(metric)
    v = np.where(np.isfinite(v), v, np.inf if higher else -np.inf)
    return int(np.argmin(v) if higher else np.argmax(v))


def _evaluated(history: list[dict], metric: str) -> list[dict]:
    return [e for e in history if e.get("metrics", {}).get(metric) is not None]


def plot_sites(history: list[dict], metric: str, names: list[str] | None = None,
               max_bars: int = 40):  # fmt: skip
    """Per-hospital view of ``metric`` (a test metric, e.g. ``test_accuracy``): left, each
    site's value at the last evaluation with the worst site marked and the pooled and
    client-mean values as lines (a histogram of sites beyond ``max_bars`` sites); right, the
    pooled, client-mean and worst-site curves over rounds (a matplotlib Figure)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    entries = _evaluated(history, metric)
    if not entries:
        raise ValueError(f"metric {metric!r} was never evaluated; choose from "
                         f"{sorted(history[-1].get('metrics', {}))}")  # fmt: skip
    last = entries[-1]
    values = np.asarray(last["client_metrics"][metric], np.float64)
    names = list(names) if names is not None else [f"client {i}" for i in range(values.size)]
    worst = worst_site(values, metric)
    label = metric_label(metric)
    pooled, mean = last["metrics"][metric], last["metrics"][f"{metric}_client_mean"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2), width_ratios=(1.4, 1))
    line_styles = styles(3)
    if values.size <= max_bars:
        colors = ["tab:red" if i == worst else "tab:blue" for i in range(values.size)]
        ax1.bar(range(values.size), values, color=colors)
        ax1.set_xticks(range(values.size), names, rotation=45, ha="right", fontsize=8)
        ax1.set_xlabel("hospital (red: worst)")
        ax1.set_ylabel(label)
    else:
        ax1.hist(values[np.isfinite(values)], bins=30, color="tab:blue")
        ax1.set_xlabel(f"{label} of a hospital (worst: "
                       f"{'none defined' if worst is None else names[worst]})")
        ax1.set_ylabel("hospitals (count)")
    line = ax1.axhline if values.size <= max_bars else ax1.axvline
    for name, v, color, ls in (("pooled", pooled, "black", "--"),
                               ("client mean", mean, "tab:gray", ":")):  # fmt: skip
        if v is not None:  # None: undefined at every site
            line(v, color=color, ls=ls, label=f"{name} {v:.4f}")
    ax1.set_title(f"{label} per hospital, round {last['round']}")
    legend_outside(ax1)
    rounds = [e["round"] for e in entries]
    for (name, key), st in zip((("pooled", metric), ("client mean", f"{metric}_client_mean"),
                                ("worst hospital", f"{metric}_worst")), line_styles,
                               strict=True):  # fmt: skip
        curve = np.array([e["metrics"].get(key) for e in entries], np.float64)  # None -> NaN
        ax2.plot(rounds, curve, label=name, markersize=4, **st)
    ax2.set_xlabel("round")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_ylabel(label)
    ax2.set_title(f"{label} over rounds")
    legend_outside(ax2)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def report(
    root: str | Path,
    out: str | Path | None = None,
    metrics: list[str] | None = None,
    curve_metric: str | None = None,
    html: bool = False,
    html_groups: int = 8,
) -> dict:
    """Writes report.md, report.csv, curves.png and curves.pdf (and, with ``html``, the
    self-contained report.html of :mod:`fljax._report_html`); returns their paths."""
    import matplotlib

    if html_groups < 0:
        raise ValueError(f"html_groups must be >= 0, got {html_groups}")
    matplotlib.use("Agg")
    runs = collect(root)
    groups = group(runs)
    metrics = metrics or default_metrics(runs)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = table(groups, metrics)
    with open(out / "report.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    (out / "report.md").write_text(_markdown(header, rows, metrics))
    curve_metric = curve_metric or metrics[0]
    fig = plot_curves(groups, curve_metric)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"curves.{ext}", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    paths = {}
    if html:
        from fljax._report_html import write_html

        worst = f"{curve_metric}_worst"
        curves = [curve_metric] + [worst] * any(worst in e["metrics"] for e in runs[0]["history"])
        paths["html"] = write_html(root, out, runs, groups, metrics, (header, rows), curves,
                                   max_groups=html_groups)  # fmt: skip
    return paths | {
        "markdown": out / "report.md",
        "csv": out / "report.csv",
        "figure": out / "curves.png",
        "rows": len(rows),
        "runs": len(runs),
    }


def main(argv=None) -> None:
    """``fljax-report``: :func:`report` from the command line (``fljax-report --help``)."""
    p = argparse.ArgumentParser(prog="fljax-report", description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, help="a multirun folder (or any folder of run folders)")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: sweep)")
    p.add_argument("--metrics", nargs="+", default=None, help="final metrics in the table")
    p.add_argument("--curve", default=None, help="metric of the learning curves")
    p.add_argument("--html", action="store_true",
                   help="also write report.html: one self-contained page (figures embedded)")
    p.add_argument("--html-groups", type=int, default=8,
                   help="settings with a per-hospital section in report.html (default 8)")
    args = p.parse_args(argv)
    paths = report(args.sweep, args.out, args.metrics, args.curve, args.html, args.html_groups)
    print(Path(paths["markdown"]).read_text())
    print(
        f"{paths['runs']} runs in {paths['rows']} groups; wrote {paths['csv']}, "
        f"{paths['figure']} (and .pdf)" + (f", {paths['html']}" if "html" in paths else "")
    )


if __name__ == "__main__":
    main()
