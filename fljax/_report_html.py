"""``fljax-report <folder> --html``: one self-contained HTML file (figures embedded as PNG)
for a run, a seeds run or a sweep: the configuration, the final metrics (mean ± sample std
over seeds), learning curves, a per-hospital table with the worst site highlighted, fairness
across sites, privacy spent and bytes sent. Opens in any browser, offline; nothing is
fetched."""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import re
from pathlib import Path

import numpy as np

from fljax._folder import CONFIG_FILE, META_DIR
from fljax._io import write_atomic
from fljax._plot import metric_label, setting_label
from fljax.report import higher_is_better, mean_std, worst_site

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em;
       max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left;
         white-space: nowrap; }
th { background: #f0f0f0; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.worst { background: #f8c9c4; font-weight: bold; }
tr.worst-row td:first-child { background: #f8c9c4; font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: .85em; } pre { background: #f7f7f7; padding: .8em; }
"""


NUMBER = re.compile(r"[-+0-9.e ±–]+")


def _e(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[str]], cell_class=None, row_class=None) -> str:
    """An HTML table of already formatted cells; ``cell_class(i, j)`` / ``row_class(i)`` name
    the CSS class of a cell / row (or None)."""
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        rc = row_class(i) if row_class else None
        cells = []
        for j, c in enumerate(row):
            cc = " ".join(filter(None, [cell_class(i, j) if cell_class else None,
                                        "n" if NUMBER.fullmatch(str(c)) else None]))
            cells.append(f'<td class="{cc}">{_e(c)}</td>' if cc else f"<td>{_e(c)}</td>")
        out.append((f'<tr class="{rc}">' if rc else "<tr>") + "".join(cells) + "</tr>")
    return "\n".join([*out, "</table>"])


def _figure(fig, alt: str) -> str:
    """``fig`` as an embedded PNG (base64 data URI); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _label(g: tuple) -> str:
    return setting_label(g) or "all runs"


def _run_config(run: dict) -> dict | None:
    """The resolved configuration saved by ``fljax-run`` (the run's folder or, for a seed of
    a ``seeds`` / ``sweep`` run, its parent's)."""
    for folder in (run["path"], run["path"].parent):
        path = folder / META_DIR / CONFIG_FILE
        if path.exists():
            return json.loads(path.read_text())["config"]
    return None


def _fact(summary: dict, key: str) -> str:
    value = summary.get(key)
    if key == "hparams" or isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


FACTS = {"dataset": "dataset", "num_clients": "clients", "model": "model",
         "algorithm": "algorithm", "hparams": "hyperparameters", "final_round": "rounds",
         "privacy": "privacy", "secagg": "secure aggregation", "compression": "compression",
         "aggregator": "aggregator", "attack": "attack"}  # fmt: skip


def _config_section(root: Path, runs: list[dict], groups: dict) -> str:
    """What every run shares (a value, or "varies"), what the settings vary, the seeds, and
    the first run's resolved configuration."""
    rows = []
    for key, name in FACTS.items():
        values = {_fact(r["summary"], key) for r in runs}
        if values != {"None"}:
            rows.append([name, values.pop() if len(values) == 1 else "varies (see below)"])
    rows.append(["seeds", ", ".join(map(str, sorted({r["summary"].get("seed") for r in runs},
                                                    key=str)))])  # fmt: skip
    parts = ["<h2>Configuration</h2>", f"<p>{len(runs)} finished runs in {len(groups)} "
             f"settings under <code>{_e(root)}</code>.</p>", _table(["", "value"], rows)]
    varying = sorted({k for g in groups for k, _ in g})
    if varying:
        rows = [[k, ", ".join(sorted({v for g in groups for kk, v in g if kk == k}))]
                for k in varying]  # fmt: skip
        parts += ["<p>Varies across settings:</p>", _table(["key", "values"], rows)]
    config = _run_config(runs[0])
    if config is not None:
        from omegaconf import OmegaConf

        yaml = OmegaConf.to_yaml(OmegaConf.create(config))
        parts.append(f"<details><summary>resolved configuration of {_e(runs[0]['path'])}"
                     f"</summary><pre>{_e(yaml)}</pre></details>")  # fmt: skip
    return "\n".join(parts)


def _metrics_section(header: list[str], rows: list[list], metrics: list[str]) -> str:
    """One column per setting (one row per setting beyond 8 settings), each cell the mean ±
    sample std over the setting's seeds."""
    n_keys = len(header) - 2 * len(metrics)

    def cell(row, i):  # one run: no spread to show
        return _num(row[i]) + ("" if row[n_keys - 1] == 1 else f" ± {_num(row[i + 1])}")

    names = [setting_label(zip(header[: n_keys - 1], row, strict=False)) or "all runs"
             for row in rows]  # fmt: skip
    values = [[cell(row, i) for i in range(n_keys, len(row), 2)] for row in rows]
    if len(rows) <= 8:
        body = [[metric_label(m), *[v[j] for v in values]] for j, m in enumerate(metrics)]
        body.insert(0, ["runs (n)", *[str(row[n_keys - 1]) for row in rows]])
        table = _table(["metric", *names], body)
    else:
        table = _table(["setting", "n", *map(metric_label, metrics)],
                       [[nm, str(row[n_keys - 1]), *v]
                        for nm, row, v in zip(names, rows, values, strict=True)])  # fmt: skip
    return "\n".join(["<h2>Final metrics</h2>", "<p class=note>mean ± sample standard "
                      "deviation (ddof 1) over the seeds of each setting.</p>", table])


def _curves_section(groups: dict, metrics: list[str]) -> str:
    from fljax.report import plot_curves

    parts = ["<h2>Learning curves</h2>"]
    for m in metrics:
        parts.append(_figure(plot_curves(groups, m), f"learning curve of {metric_label(m)}"))
    return "\n".join(parts)


def _site_mean(per_run) -> np.ndarray:
    """Each site's mean over the runs (rows) of its finite values (None counts as missing);
    NaN for a site with none."""
    v = np.asarray(per_run, np.float64)  # None -> NaN
    ok = np.isfinite(v)
    count = ok.sum(axis=0)
    return np.where(count > 0, np.where(ok, v, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)


def _site_values(runs: list[dict], metric: str) -> np.ndarray:
    """Each site's ``metric`` at the end of the run, averaged over the runs (seeds) where
    defined."""
    return _site_mean([r["summary"]["client_metrics"][metric] for r in runs])


def _shown(values: np.ndarray, metric: str, max_rows: int) -> list[int]:
    """Every site, or the ``max_rows // 2`` worst and best defined sites on ``metric``, worst
    first."""
    if values.size <= max_rows:
        return list(range(values.size))
    key = np.where(np.isfinite(values), values if higher_is_better(metric) else -values, np.inf)
    order = [i for i in np.argsort(key, kind="stable").tolist() if np.isfinite(key[i])]
    half = max_rows // 2
    return order if len(order) <= max_rows else order[:half] + order[-half:]


def _site_metrics(runs: list[dict]) -> list[str]:
    """The per-site test metrics every run of a setting recorded (none without evaluation)."""
    keys = [set(r["summary"].get("client_metrics") or {}) for r in runs]
    return [k for k in (runs[0]["summary"].get("client_metrics") or {})
            if k.startswith("test_") and all(k in ks for ks in keys)]  # fmt: skip


def _sites_table(runs: list[dict], max_rows: int) -> str:
    """Per-hospital test metrics (mean over the runs); the worst value of each metric and the
    worst site on the first metric highlighted."""
    summary = runs[0]["summary"]
    metrics = _site_metrics(runs)
    names = summary.get("client_names") or [str(i) for i in range(summary["num_clients"])]
    values = {m: _site_values(runs, m) for m in metrics}
    worst = {m: worst_site(values[m], m) for m in metrics}
    shown = _shown(values[metrics[0]], metrics[0], max_rows)
    n_test = summary["client_metrics"].get("num_test_examples")
    rows = [[names[i], "" if n_test is None else str(n_test[i]),
             *[_num(float(values[m][i])) for m in metrics]] for i in shown]  # fmt: skip
    note = ("" if len(shown) == len(names) else f"<p class=note>{len(shown)} of {len(names)} "
            f"sites shown: the worst and the best on {metric_label(metrics[0])}.</p>")

    def cell(i, j):
        return "worst" if j >= 2 and shown[i] == worst[metrics[j - 2]] else None

    def row(i):
        return "worst-row" if shown[i] == worst[metrics[0]] else None

    header = ["hospital", "test n", *[metric_label(m) for m in metrics]]
    return note + _table(header, rows, cell, row)


def _mean_history(runs: list[dict]) -> list[dict]:
    """The runs' histories averaged entry by entry (metrics and per-site metrics; a figure
    undefined in any run is left out)."""
    out = []
    for entries in zip(*(r["history"] for r in runs), strict=False):
        keys = [k for k in entries[0]["metrics"]
                if all(isinstance(e["metrics"].get(k), int | float) for e in entries)]  # fmt: skip
        sites = entries[0].get("client_metrics") or {}
        out.append({
            "round": entries[0]["round"],
            "metrics": {k: float(np.mean([e["metrics"][k] for e in entries]))
                        for k in keys},
            "client_metrics": {k: _site_mean([e["client_metrics"][k] for e in entries]).tolist()
                               for k in sites},
        })  # fmt: skip
    return out


def _sites_section(groups: dict, max_groups: int, max_rows: int) -> str:
    from fljax.report import plot_sites

    parts = ["<h2>Per hospital</h2>", "<p class=note>Each site's final test metrics, mean over "
             "the seeds; the worst site of each metric is highlighted. The figures average "
             "the seeds' runs round by round.</p>"]  # fmt: skip
    for k, (g, runs) in enumerate(groups.items()):
        if k == max_groups:
            parts.append(f"<p class=note>{len(groups) - max_groups} more settings not shown "
                         f"(--html-groups).</p>")  # fmt: skip
            break
        site_metrics = _site_metrics(runs)
        if not site_metrics:
            parts.append(f"<h3>{_e(_label(g))}</h3><p>no per-site test metrics recorded</p>")
            continue
        metric = site_metrics[0]
        names = runs[0]["summary"].get("client_names")
        fig = plot_sites(_mean_history(runs), metric, names)
        parts += [f"<h3>{_e(_label(g))} (n={len(runs)})</h3>", _sites_table(runs, max_rows),
                  _figure(fig, f"{metric_label(metric)} per hospital, {_label(g)}")]  # fmt: skip
    return "\n".join(parts)


def _fairness_section(groups: dict) -> str:
    """Spread and worst site of each metric across sites (per-site values averaged over
    seeds): pooled, client mean, client std, worst site and value, best - worst gap."""
    rows = []
    for g, runs in groups.items():
        names = runs[0]["summary"].get("client_names")
        for m in _site_metrics(runs):
            v = _site_values(runs, m)
            w = worst_site(v, m)
            pooled = mean_std([r["summary"]["metrics"].get(m) for r in runs])[0]
            row = [_label(g), metric_label(m), _num(pooled)]
            if w is None:
                rows.append(row + ["–"] * 5)
                continue
            d = v[np.isfinite(v)]
            best = float(d.max() if higher_is_better(m) else d.min())
            rows.append(row + [_num(float(d.mean())), _num(float(d.std())),
                               names[w] if names else str(w), _num(float(v[w])),
                               _num(abs(best - float(v[w])))])  # fmt: skip
    header = ["setting", "metric", "pooled", "client mean", "client std", "worst site",
              "worst value", "best - worst"]  # fmt: skip
    return "\n".join(["<h2>Fairness across sites</h2>", _table(header, rows)])


def _last_privacy(run: dict) -> dict | None:
    return next((e["privacy"] for e in reversed(run["history"]) if "privacy" in e), None)


def _privacy_section(groups: dict) -> str:
    rows = []
    for g, runs in groups.items():
        spent = [p for p in map(_last_privacy, runs) if p is not None]
        if spent:
            p = spent[0]
            eps = np.mean([q["epsilon"] for q in spent])
            rows.append([_label(g), p.get("level", ""), p.get("relation", ""),
                         p.get("accountant", ""), _num(float(eps), 3), f"{p['delta']:g}",
                         _num(p.get("noise_multiplier")), _num(p.get("clip_norm"))])  # fmt: skip
    if not rows:
        return ""
    header = ["setting", "level", "neighbouring relation", "accountant", "epsilon (mean)",
              "delta", "noise multiplier", "clip norm"]  # fmt: skip
    return "\n".join(["<h2>Privacy spent</h2>", _table(header, rows)])


def _bytes_section(groups: dict) -> str:
    rows = []
    for g, runs in groups.items():
        up = [r["summary"].get("bytes_up") for r in runs]
        down = [r["summary"].get("bytes_down") for r in runs]
        if any(v is not None for v in up + down):
            rows.append([_label(g), *[_num(mean_std(v)[0] / 1e6, 3) for v in (up, down)]])
    if not rows:
        return ""
    return "\n".join(["<h2>Communication</h2>", _table(
        ["setting", "uplink, all clients (MB)", "downlink, all clients (MB)"], rows)])


def write_html(root: Path, out: Path, runs: list[dict], groups: dict, metrics: list[str],
               table: tuple, curve_metrics: list[str], max_groups: int = 8,
               max_rows: int = 40) -> Path:  # fmt: skip
    """Writes ``out / "report.html"`` (atomically) and returns its path."""
    from fljax import __version__

    now = datetime.datetime.now().isoformat(timespec="seconds")
    body = [
        f"<h1>fljax report: {_e(Path(root).resolve().name)}</h1>",
        f"<p class=note>written {now} by fljax {__version__} from {_e(Path(root).resolve())}"
        "</p>",
        _config_section(root, runs, groups),
        _metrics_section(*table, metrics),
        _curves_section(groups, curve_metrics),
        _sites_section(groups, max_groups, max_rows),
        _fairness_section(groups),
        _privacy_section(groups),
        _bytes_section(groups),
    ]
    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>fljax report: {_e(Path(root).resolve().name)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(b for b in body if b)
            + "\n</body></html>\n")  # fmt: skip
    path = out / "report.html"
    write_atomic(path, page)
    return path
