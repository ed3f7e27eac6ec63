"""How much does each hospital contribute? Site values on Fed-Heart-Disease and on a
synthetic federation with planted bad sites.

Utility: the validation metric of the final global model, on records held out from every
(clean) site's training split (``fljax.valuation.holdout``; the sites' test splits are never
used). Each coalition x seed is one counterfactual federation on the runs axis
(``simulate(subsets=..., seeds=...)``), trained as one program per chunk.

- ``heart``: the 4 Fed-Heart-Disease hospitals (FLamby's files, ``--data-dir``), logistic
  model, FedAvg (10 local SGD steps of batch 4, client_lr 0.05), full participation,
  ``--rounds`` rounds, accuracy; exact Shapley (16 coalitions), leave-one-out, TMC-Shapley
  (Ghorbani and Zou 2019) and GTG-Shapley (Liu et al. 2022) over ``--seeds`` seeds.
- ``planted``: 8 ``synthetic_hospitals`` sites (mild heterogeneity: covariate shift 0.2)
  of which site 5 has random labels, site 6 is an exact copy of site 0 and site 7 keeps only
  4 records; utility: the negative validation cross-entropy (a continuous utility; accuracy
  on a few hundred records moves in steps); exact Shapley (256 coalitions). Expected: the
  noisy and the tiny site last, the twins equal (up to their different minibatch draws:
  each site's keys fold in its index).

Each approximation is compared with the exact values (Spearman rank correlation, largest
absolute difference, federations trained). Writes ``valuation.md``, ``valuation.png`` and
``valuation.json`` to ``--out`` and ends with one JSON line.

    python experiments/valuation.py [--seeds 5] [--rounds 15] [--out outputs/valuation]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

import fljax
from fljax import valuation as V
from fljax.data import ClientData, from_client_arrays

ROOT = Path(__file__).resolve().parent.parent
SGD = dict(client_lr=0.05, local_epochs=None, local_steps=10, batch_size=4)


def heart(args):
    fed = fljax.data.load("heart_disease", data_dir=str(args.data_dir), standardize="global",
                          metrics=("accuracy",))  # fmt: skip
    fed, val = V.holdout(fed, 0.2, seed=0)
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", **SGD)
    seeds = list(range(args.seeds))
    out, t0 = {}, time.perf_counter()
    g = V.game(algo, model, fed, validation=val, rounds=args.rounds, seeds=seeds)
    out["shapley"] = V.shapley(g)
    out["shapley"].info["seconds"] = round(time.perf_counter() - t0, 2)
    out["leave_one_out"] = V.leave_one_out(g)
    t0 = time.perf_counter()
    out["tmc_shapley"] = V.tmc_shapley(
        V.game(algo, model, fed, validation=val, rounds=args.rounds, seeds=seeds), batch=8)
    out["tmc_shapley"].info["seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    out["gtg_shapley"] = V.gtg_shapley(algo, model, fed, validation=val, rounds=args.rounds,
                                       seeds=seeds)  # fmt: skip
    out["gtg_shapley"].info["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _planted_federation(sites: int = 8, seed: int = 0):
    """``sites`` hospitals; validation held out from the clean sites first, then the last
    three planted: site n-3's labels randomized, site n-2 := site 0, site n-1 cut to 4
    records."""
    base = fljax.data.load("synthetic_hospitals", num_clients=sites, num_features=10,
                           mean_size=60, size_sigma=0.3, covariate_shift=0.2,
                           scale_shift=0.1, prevalence_sd=0.2, seed=seed,
                           metrics=("auroc",))  # fmt: skip
    base, val = V.holdout(base, 0.25, seed=seed)
    x, y, n = (np.asarray(a) for a in base.train)
    xs, ys = [x[c, : n[c]] for c in range(sites)], [y[c, : n[c]] for c in range(sites)]
    rng = np.random.default_rng(seed)
    noisy, twin, tiny = sites - 3, sites - 2, sites - 1
    ys[noisy] = rng.integers(0, 2, size=ys[noisy].shape).astype(ys[noisy].dtype)
    xs[twin], ys[twin] = xs[0], ys[0]
    xs[tiny], ys[tiny] = xs[tiny][:4], ys[tiny][:4]
    tx, ty, tn = (np.asarray(a) for a in base.test)
    names = [*(f"site_{i}" for i in range(noisy)), f"site_{noisy}_noisy",
             f"site_{twin}_twin_of_0", f"site_{tiny}_tiny"]  # fmt: skip
    fed = from_client_arrays(xs, ys, [tx[c, : tn[c]] for c in range(sites)],
                             [ty[c, : tn[c]] for c in range(sites)], num_classes=2,
                             name="planted_hospitals", client_names=names,
                             metrics=("auroc",))  # fmt: skip
    return fed, ClientData(*val)


def planted(args):
    fed, val = _planted_federation(args.planted_sites)
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", **SGD)
    t0 = time.perf_counter()
    g = V.game(algo, model, fed, validation=val, rounds=args.rounds,
               seeds=list(range(args.seeds)), metric="loss")  # fmt: skip
    out = {"shapley": V.shapley(g)}
    out["shapley"].info["seconds"] = round(time.perf_counter() - t0, 2)
    out["shapley"].info["programs"] = g.programs
    out["leave_one_out"] = V.leave_one_out(g)
    return out


def _compare(exact, approx) -> dict:
    rho = stats.spearmanr(exact.mean, approx.mean).statistic
    return {"spearman": round(float(rho), 3),
            "max_abs_diff": round(float(np.abs(exact.mean - approx.mean).max()), 4),
            "federations": approx.federations, "seconds": approx.info.get("seconds")}  # fmt: skip


def figure(results: dict):
    """One panel per federation: each method's mean site values with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fljax._plot import bar_styles, legend_below

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8))
    for ax, (name, vals) in zip(np.atleast_1d(axes), results.items(), strict=True):
        methods = list(vals)
        sites = vals[methods[0]].sites
        width = 0.8 / len(methods)
        for j, (m, style) in enumerate(zip(methods, bar_styles(len(methods)), strict=True)):
            pos = np.arange(len(sites)) + j * width
            ax.bar(pos, vals[m].mean, width, yerr=vals[m].interval(), label=m, capsize=2,
                   **style)  # fmt: skip
        ax.set_xticks(np.arange(len(sites)) + 0.4 - width / 2, sites, rotation=30, ha="right",
                      fontsize=8)  # fmt: skip
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=f"{name}: site values (95% CI over seeds)", xlabel="site",
               ylabel="value (utility gained)")  # fmt: skip
        legend_below(ax, ncol=len(methods))
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/heart_disease")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--planted-sites", type=int, default=8, help="at least 4")
    p.add_argument("--out", type=Path, default=Path("outputs/valuation"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"heart": heart(args), "planted": planted(args)}
    lines = []
    for name, vals in results.items():
        lines.append(f"## {name}\n")
        for v in vals.values():
            lines += [v.table(), ""]
    comparison = {m: _compare(results["heart"]["shapley"], v)
                  for m, v in results["heart"].items() if m != "shapley"}  # fmt: skip
    lines.append("## heart: approximations vs exact Shapley\n")
    lines.append("| method | Spearman | max abs diff | federations trained | seconds |")
    lines.append("|---|---:|---:|---:|---:|")
    lines += [f"| {m} | {c['spearman']} | {c['max_abs_diff']} | {c['federations']} | "
              f"{c['seconds']} |" for m, c in comparison.items()]  # fmt: skip
    (args.out / "valuation.md").write_text("\n".join(lines) + "\n")
    figure(results).savefig(args.out / "valuation.png", dpi=130, bbox_inches="tight")
    shap = results["planted"]["shapley"]
    summary = {
        "heart": {m: v.to_dict() for m, v in results["heart"].items()},
        "planted": {m: v.to_dict() for m, v in results["planted"].items()},
        "heart_vs_exact": comparison,
        "planted_ranking": shap.ranking(),
        "planted_twin_gap": float(abs(shap.mean[0] - shap.mean[-2])),
    }
    (args.out / "valuation.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))
    print(json.dumps({"heart_shapley": summary["heart"]["shapley"]["mean"],
                      "heart_vs_exact": comparison, "planted_ranking": shap.ranking(),
                      "planted_twin_gap": round(summary["planted_twin_gap"], 5),
                      "planted_seconds": shap.info["seconds"]}))  # fmt: skip


if __name__ == "__main__":
    main()
