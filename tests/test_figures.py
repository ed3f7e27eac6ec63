"""Every figure fljax and its experiments write, rendered from small made-up results and
checked from the matplotlib objects: a title, labelled axes, a distinct look per series,
the legend outside the data (``fljax._plot.style_problems``)."""

import importlib.util
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fljax._plot import legend_outside, style_problems  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _experiment(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(fig):
    problems = style_problems(fig)
    plt.close(fig)
    assert problems == []


def test_checker_finds_each_problem():
    """The checker itself: each rule fires on a figure that breaks it, and only then."""
    fig, (a, b) = plt.subplots(1, 2)
    a.plot([0, 1], [0, 1], "o-", color="C0", label="one")
    a.plot([0, 1], [1, 0], "o-", color="C0", label="two")  # same look
    a.legend(loc="center")  # over the data
    b.plot([0, 1], [0, 1], label="x")
    b.plot([0, 1], [1, 1], label="y")  # two series, no legend
    im = b.imshow(np.eye(2))
    fig.colorbar(im, ax=b)
    problems = style_problems(fig)
    plt.close(fig)
    assert "axes 0: no title" in problems and "axes 1: no title" in problems
    assert "axes 0 (''): no x label" in problems and "axes 1 (''): no y label" in problems
    assert "axes 0 (''): series 'two' looks like another" in problems
    assert "axes 1 (''): series ['x', 'y'] in no legend" in problems
    assert "colour bar without a label" in problems
    assert "legend of 0 covers the data of axes ''" in problems

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], "o-", label="one")
    ax.plot([0, 1], [1, 0], "s-", label="two")
    ax.set(title="t", xlabel="x (unit)", ylabel="y (unit)")
    legend_outside(ax)
    fig.tight_layout()
    _check(fig)


def _history(rounds=4, clients=6):
    rng = np.random.default_rng(0)
    out = []
    for r in range(rounds + 1):
        acc = rng.uniform(0.5, 1.0, clients)
        out.append({
            "round": r,
            "metrics": {"test_accuracy": float(acc.mean()), "test_accuracy_worst": float(acc.min()),
                        "test_accuracy_client_mean": float(acc.mean() - 0.01)},
            "client_metrics": {"test_accuracy": acc.tolist()},
        })  # fmt: skip
    return out


@pytest.mark.parametrize("clients,max_bars", [(6, 40), (60, 40)], ids=["bars", "histogram"])
def test_sites_figure(clients, max_bars):
    from fljax import report

    history = _history(clients=clients)
    fig = report.plot_sites(history, "test_accuracy", max_bars=max_bars)
    worst = int(np.argmin(history[-1]["client_metrics"]["test_accuracy"]))
    if clients <= max_bars:  # the worst site's bar is the red one
        bars = fig.axes[0].patches
        red = [i for i, p in enumerate(bars) if p.get_facecolor()[:3] == (0.8392156862745098,
                                                                           0.15294117647058825,
                                                                           0.1568627450980392)]
        assert red == [worst]
    else:
        assert f"worst: client {worst}" in fig.axes[0].get_xlabel()
    _check(fig)
    with pytest.raises(ValueError, match="'test_auroc' was never evaluated"):
        report.plot_sites(history, "test_auroc")


def test_curves_figure():
    from fljax import report

    groups = {
        (("algorithm.client_lr", str(lr)),): [{"history": _history()} for _ in range(2)]
        for lr in (0.05, 0.1, 0.2)
    }
    _check(report.plot_curves(groups, "test_accuracy"))


@pytest.mark.parametrize("num_classes", [2, 12])
def test_federation_figure(num_classes):
    import fljax

    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (40, 80, 120, 20, 60)]
    ys = [rng.integers(0, num_classes, len(x)) for x in xs]
    fed = fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=num_classes, name="made-up")
    _check(fljax.data.plot_federation(fed))


def test_experiment_figures():
    rounds = list(range(0, 11))
    curve = np.linspace(0.6, 0.8, 11).tolist()
    tta = _experiment("time_to_accuracy")
    _check(tta.figure({f"setting {i}": (np.arange(11) * (i + 1), curve) for i in range(5)},
                      0.75, "title"))  # fmt: skip
    comp = _experiment("compression_tradeoff")
    _check(comp.figure({f"s{i}{' + EF' if i % 2 else ''}": ((np.arange(11) + 1) * 10**i, curve)
                        for i in range(11)}, "title"))  # fmt: skip
    flamby = _experiment("flamby")
    table = {s: {"fljax": {"per_client": [0.7, 0.8, 0.6, 0.9], "pooled": [0.75, 0.01]}}
             for s in ("Pooled", "Local 0", "FedAvg", "FedProx")}  # fmt: skip
    _check(flamby.figure({"heart": table, "tcga": table}))
    fedprox = _experiment("fedprox_synthetic")
    one = {m: {"rounds": rounds, "train_loss": np.linspace(2, 1, 11).tolist()}
           for m in fedprox.METHODS}  # fmt: skip
    _check(fedprox.figure({ds: {"0.0": one, "0.5": one, "0.9": one}
                           for ds in ("Synthetic-IID", "Synthetic(1,1)")}))  # fmt: skip
    robust = _experiment("robustness")
    _check(robust.figure(np.full((3, 4), 0.7), ["mean", "krum", "median"],
                         ["none", "alie", "ipm", "sign_flip"], "title", "test_auroc"))  # fmt: skip
    dp = _experiment("dp_tradeoff")
    rows = [dict(epsilon=e, accuracy=0.8, auroc=0.85, update_mia_auc=0.6, loss_mia_auc=0.55)
            for e in (float("inf"), 8.0, 2.0, 0.5)]  # fmt: skip
    _check(dp.figure(rows, rows))
    val = _experiment("valuation")
    from fljax.valuation import Valuation

    one = Valuation("shapley", ("a", "b", "c"), [0, 1], np.ones((2, 3)), np.ones(2), np.zeros(2))
    _check(val.figure({"heart": {"shapley": one, "gtg_shapley": one}, "planted": {"shapley": one}}))
    audit = _experiment("privacy_audit")
    shots = [dict(noise_multiplier=z, accounted=a, epsilon=e, interval=[e / 2, e * 2])
             for z, a, e in ((0.0, float("inf"), 20.0), (1.0, 10.0, 5.0), (2.0, 3.0, 2.0))]
    _check(audit.figure(shots))


def test_sites_figure_with_a_metric_undefined_everywhere():
    """AUROC undefined at every site (one class each): no worst site, no pooled line, the
    curves drawn where defined, and still the house style."""
    from fljax import report

    history = _history()
    for e in history:
        e["metrics"] |= {"test_auroc": None, "test_auroc_client_mean": None,
                         "test_auroc_worst": None}  # fmt: skip
        e["client_metrics"]["test_auroc"] = [None] * 6
    history[-1]["metrics"]["test_auroc"] = 0.7  # pooled defined only at the end
    assert report.worst_site([None] * 6, "test_auroc") is None
    assert report.worst_site([0.3, 0.9, float("nan")], "test_loss") == 1  # lower is better
    fig = report.plot_sites(history, "test_auroc")
    bars = fig.axes[0].patches
    assert len(bars) == 6 and all(p.get_facecolor()[:3] != (0.8392156862745098,
                                                            0.15294117647058825,
                                                            0.1568627450980392) for p in bars)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["pooled 0.7000"]
    _check(fig)
