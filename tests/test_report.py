"""A 2x2 sweep followed by fljax-report: a 2-row mean +- std table and a readable figure."""

import csv
import json
import re
import shutil

import numpy as np
import pytest

from fljax import report
from tests.cli import fljax_run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    fljax_run(
        "-m",
        "algorithm.client_lr=0.05,0.2",
        "seed=0,1",
        "rounds=3",
        "eval_every=1",
        "clients_per_round=4",
        "model=logistic",
        "progress=false",
        "checkpoint=false",
        f"hydra.sweep.dir={root}",
    )
    return root


def test_report_groups_seeds_into_mean_and_std(sweep, tmp_path):
    paths = report.report(sweep, tmp_path)
    assert paths["runs"] == 4 and paths["rows"] == 2
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["algorithm.client_lr"] for r in rows] == ["0.05", "0.2"]
    assert all(r["n"] == "2" for r in rows)
    mean, std = rows[0]["test_accuracy_mean"], rows[0]["test_accuracy_std"]
    runs = [r for r in report.collect(sweep) if r["overrides"]["algorithm.client_lr"] == "0.05"]
    accs = [r["summary"]["metrics"]["test_accuracy"] for r in runs]
    assert float(mean) == pytest.approx(sum(accs) / 2, abs=1e-4)
    assert float(std) == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5, abs=1e-4)
    text = paths["markdown"].read_text()
    assert "| algorithm.client_lr |" in text and f"{float(mean):.4f} ± " in text
    assert "ddof 1" in text
    assert (tmp_path / "curves.png").exists() and (tmp_path / "curves.pdf").exists()


def test_curves_figure_is_readable(sweep):
    """Title, axis labels, readable legend outside the data, a distinct colour and marker per
    group at every evaluation, one std band per group."""
    import matplotlib

    matplotlib.use("Agg")
    runs = report.collect(sweep)
    fig = report.plot_curves(report.group(runs), "test_accuracy_client_mean")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "test accuracy (client mean)"
    assert ax.get_title().startswith("test accuracy (client mean): mean over seeds")
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["client_lr 0.05 (n=2)",
                                                         "client_lr 0.2 (n=2)"]  # fmt: skip
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    lines = ax.get_lines()
    assert len({(str(x.get_color()), x.get_marker()) for x in lines}) == len(lines) == 2
    assert all(x.get_marker() not in ("", "None") for x in lines)
    assert len(lines[0].get_xdata()) == len(runs[0]["history"])  # a point per evaluation
    assert len(ax.collections) == 2  # one std band per group
    from fljax._plot import style_problems

    assert style_problems(fig) == []


def test_plot_style_helpers():
    from fljax import _plot

    assert _plot.metric_label("test_auroc") == "test AUROC"
    assert _plot.metric_label("test_c_index_worst") == "test C-index (worst client)"
    assert _plot.metric_label("local_loss") == "local loss"
    pairs = {(str(s["color"]), s["marker"]) for s in _plot.styles(20)}
    assert len(pairs) == 20 and len({s["color"] for s in _plot.styles(11)}) == 11


def test_report_on_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished fljax runs"):
        report.report(tmp_path)


def test_optuna_sweeper_searches_a_hyperparameter(tmp_path):
    """`fljax-run -m hydra/sweeper=optuna`: 3 trials over client_lr, best value reported."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    fljax_run(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.sampler.seed=0",
        "algorithm.client_lr=interval(0.01,0.2)",
        "rounds=2",
        "eval_every=2",
        "clients_per_round=4",
        "model=logistic",
        "progress=false",
        "checkpoint=false",
        "save_state=false",
        f"hydra.sweep.dir={tmp_path}",
    )
    import yaml

    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    lr = best["best_params"]["algorithm.client_lr"]
    assert 0.01 <= lr <= 0.2
    trials = [json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")]
    assert len(trials) == 3
    assert best["best_value"] == max(t["objective"]["value"] for t in trials)
    assert all(t["objective"]["name"] == "test_accuracy" for t in trials)


def test_report_reads_a_seeds_and_sweep_folder_with_the_cli_std(tmp_path):
    """A ``seeds=`` x ``sweep=`` run folder: one group per swept value, each over its seed
    sub-folders, numeric columns, and the same sample std as the run's own summary."""
    folder = tmp_path / "many"
    fljax_run("seeds=[0,1,2]", "sweep={client_lr:[0.05,0.2]}", "rounds=2", "eval_every=1",
              "clients_per_round=4", "model=logistic", "progress=false", "checkpoint=false",
              f"hydra.run.dir={folder}")  # fmt: skip
    paths = report.report(folder, tmp_path / "out")
    assert paths["runs"] == 6 and paths["rows"] == 2
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["algorithm.client_lr"] for r in rows] == ["0.05", "0.2"]
    summary = json.loads((folder / "summary.json").read_text())
    for row, setting in zip(rows, summary["settings"], strict=True):
        assert row["n"] == "3"
        assert float(row["test_accuracy_mean"]) == pytest.approx(setting["mean"], abs=1e-12)
        assert float(row["test_accuracy_std"]) == pytest.approx(setting["std"], abs=1e-12)
        per_seed = setting["per_seed"]
        mean = sum(per_seed) / 3
        sample_std = (sum((v - mean) ** 2 for v in per_seed) / 2) ** 0.5
        assert setting["std"] == pytest.approx(sample_std, abs=1e-12)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _rendered(shot, box) -> int:
    """Distinct colours in the screenshot inside an element's bounding box."""
    x, y, w, h = (int(round(box[k])) for k in ("x", "y", "width", "height"))
    return len(np.unique(shot[y : y + h, x : x + w].reshape(-1, shot.shape[2]), axis=0))


def test_html_report_opens_in_a_headless_browser(sweep, tmp_path):
    """report.html is one self-contained page: every figure decodes and draws in Chromium,
    the metrics table holds mean ± std per setting, each per-hospital table highlights the
    worst site (recomputed here from the run summaries), and nothing is fetched."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from PIL import Image

    report.main([str(sweep), "--out", str(tmp_path), "--html"])  # the CLI: fljax-report --html
    path = tmp_path / "report.html"
    text = path.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained, offline
    runs = report.collect(sweep)
    expected = {}
    for g, group_runs in report.group(runs).items():
        acc = np.mean([r["summary"]["client_metrics"]["test_accuracy"] for r in group_runs], 0)
        expected[g[0][1]] = group_runs[0]["summary"]["client_names"][int(np.argmin(acc))]
    with sync_api.sync_playwright() as p:
        flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.as_uri())
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, "
                               "i.naturalWidth, i.naturalHeight, i.alt])")  # fmt: skip
        metrics = page.locator("h2:has-text('Final metrics') + p + table tr")
        metric_rows = [metrics.nth(i).locator("th, td").all_inner_texts()
                       for i in range(metrics.count())]  # fmt: skip
        worst_rows = page.locator("tr.worst-row td:first-child").all_inner_texts()
        headings = page.locator("h3").all_inner_texts()
        shot_path = tmp_path / "report.png"
        page.screenshot(path=str(shot_path), full_page=True)
        boxes = [page.locator("img").nth(i).bounding_box() for i in range(len(images))]
        table_box = page.locator("tr.worst-row").first.bounding_box()
        browser.close()
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert len(images) == 4  # two learning curves, a per-hospital figure per setting
    assert all(ok and w > 300 and h > 200 for ok, w, h, _ in images)
    assert metric_rows[0] == ["metric", "client_lr 0.05", "client_lr 0.2"]
    assert metric_rows[1] == ["runs (n)", "2", "2"]
    assert metric_rows[2][0] == "test accuracy" and len(metric_rows) == 2 + len(
        report.default_metrics(runs))
    assert all(len(r) == 3 and "±" in r[1] and "±" in r[2] for r in metric_rows[2:])
    assert headings == ["client_lr 0.05 (n=2)", "client_lr 0.2 (n=2)"]
    assert worst_rows == [expected["0.05"], expected["0.2"]]
    shot = np.asarray(Image.open(shot_path).convert("RGB"))
    for box in boxes:  # each figure drew: a plot has many colours, a blank box one
        assert _rendered(shot, box) > 50
    x, y = int(table_box["x"]) + 3, int(table_box["y"]) + 3  # the highlighted cell's colour
    assert tuple(shot[y, x]) == (0xF8, 0xC9, 0xC4)


def _fake_run(folder, seed, acc, auroc, eps=None):
    """A finished run folder as fljax-run writes it (summary.json, metrics.jsonl), with the
    given per-site final test accuracy and AUROC (None: undefined at that site)."""
    folder.mkdir(parents=True)
    names = [f"site_{i:02d}" for i in range(len(acc))]
    loss = [1.0 - a for a in acc]

    def summary_of(values, higher=True):
        v = np.array([np.nan if x is None else x for x in values])
        ok = v[np.isfinite(v)]
        return {"": float(ok.mean()), "_client_mean": float(ok.mean()),
                "_worst": float(ok.min() if higher else ok.max())}  # fmt: skip

    metrics = {}
    for name, values, higher in (("test_accuracy", acc, True), ("test_auroc", auroc, True),
                                 ("test_loss", loss, False)):  # fmt: skip
        metrics |= {name + k: v for k, v in summary_of(values, higher).items()}
    sites = {"test_accuracy": acc, "test_auroc": auroc, "test_loss": loss,
             "num_test_examples": [10] * len(acc)}  # fmt: skip
    entry = {"round": 3, "metrics": metrics, "client_metrics": sites, "bytes_up": 2_000_000,
             "bytes_down": 4_000_000}  # fmt: skip
    if eps is not None:
        entry["privacy"] = {"level": "client", "relation": "add_remove", "accountant": "rdp",
                            "epsilon": eps, "delta": 1e-5, "noise_multiplier": 1.1,
                            "clip_norm": 0.5}  # fmt: skip
    (folder / "metrics.jsonl").write_text(json.dumps({**entry, "round": 0}) + "\n"
                                          + json.dumps(entry) + "\n")  # fmt: skip
    summary = {"status": "finished", "dataset": "made_up", "num_clients": len(acc),
               "model": "mlp", "algorithm": "fedavg", "hparams": {"client_lr": 0.1},
               "seed": seed, "final_round": 3, "metrics": metrics, "client_metrics": sites,
               "client_names": names, "bytes_up": 2_000_000, "bytes_down": 4_000_000}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))


def test_html_report_many_sites_undefined_metrics_privacy_and_bytes(tmp_path):
    """60 sites: the 20 worst and 20 best rows; the worst site is the lowest accuracy and
    the highest loss (mean over seeds); a site whose AUROC is undefined in every seed is
    neither highlighted nor counted; privacy spent and bytes sent appear."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.95, 60)
    base[17] = 0.2  # the worst site on average over the two seeds
    auroc = rng.uniform(0.6, 0.9, 60).tolist()
    auroc[5] = None  # undefined at site 5 (e.g. one class only) in every seed
    for seed, eps in ((0, 2.0), (1, 3.0)):
        acc = np.clip(base + rng.normal(0, 0.01, 60), 0, 1).tolist()
        _fake_run(tmp_path / f"seed{seed}", seed, acc, auroc, eps)
    paths = report.report(tmp_path, tmp_path / "out", html=True)
    text = paths["html"].read_text()
    assert "40 of 60 sites shown: the worst and the best on test accuracy" in text
    assert len(re.findall(r"<tr[^>]*><td>site_\d\d</td>", text)) == 40
    assert re.findall(r'<tr class="worst-row"><td>(site_\d\d)</td>', text) == ["site_17"]
    row = re.search(r'<tr class="worst-row">(.*?)</tr>', text).group(1)
    assert row.count('class="worst') == 2  # its accuracy and its loss (highest) cells
    fairness = text[text.index("Fairness across sites"):]
    auroc_row = re.search(r"<td>test AUROC</td>(.*?)</tr>", fairness).group(1)
    defined = np.array([a for a in auroc if a is not None])
    assert f">{defined.mean():.4f}<" in auroc_row and f">{defined.min():.4f}<" in auroc_row
    assert "site_05" not in auroc_row
    assert "<h2>Privacy spent</h2>" in text and ">2.500<" in text  # epsilon, mean of 2 seeds
    assert "<h2>Communication</h2>" in text and ">2.000<" in text and ">4.000<" in text
    with pytest.raises(ValueError, match="html_groups must be >= 0, got -1"):
        report.report(tmp_path, tmp_path / "out2", html=True, html_groups=-1)
