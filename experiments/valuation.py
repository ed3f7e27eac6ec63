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
- ``planted``: 8 ``synthetic_hospitals`` sites (AUROC) of which site 5 has random labels,
  site 6 is an exact copy of site 0 and site 7 keeps only 4 records; exact Shapley (256
  coalitions). Expected: the noisy site last, the tiny site near 0, the twins equal.

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


def _planted_federation(seed: int = 0):
    """8 hospitals; validation held out from the clean sites first, then site 5's labels
    randomized, site 6 := site 0, site 7 cut to 4 records."""
    base = fljax.data.load("synthetic_hospitals", num_clients=8, num_features=10,
                           mean_size=60, size_sigma=0.3, seed=seed, metrics=("auroc",))  # fmt: skip
    base, val = V.holdout(base, 0.25, seed=seed)
    x, y, n = (np.asarray(a) for a in base.train)
    xs, ys = [x[c, : n[c]] for c in range(8)], [y[c, : n[c]] for c in range(8)]
    rng = np.random.default_rng(seed)
    ys[5] = rng.integers(0, 2, size=ys[5].shape).astype(ys[5].dtype)
    xs[6], ys[6] = xs[0], ys[0]
    xs[7], ys[7] = xs[7][:4], ys[7][:4]
    tx, ty, tn = (np.asarray(a) for a in base.test)
    names = [*(f"site_{i}" for i in range(5)), "site_5_noisy", "site_6_twin_of_0", "site_7_tiny"]
    fed = from_client_arrays(xs, ys, [tx[c, : tn[c]] for c in range(8)],
                             [ty[c, : tn[c]] for c in range(8)], num_classes=2,
                             name="planted_hospitals", client_names=names,
                             metrics=("auroc",))  # fmt: skip
    return fed, ClientData(*val)


def planted(args):
    fed, val = _planted_federation()
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", **SGD)
    t0 = time.perf_counter()
    g = V.game(algo, model, fed, validation=val, rounds=args.rounds,
               seeds=list(range(args.seeds)), metric="auroc")  # fmt: skip
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


def _figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 3.8))
    for ax, (name, vals) in zip(np.atleast_1d(axes), results.items(), strict=True):
        methods = list(vals)
        sites = vals[methods[0]].sites
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            pos = np.arange(len(sites)) + j * width
            ax.bar(pos, vals[m].mean, width, yerr=vals[m].interval(), label=m, capsize=2)
        ax.set_xticks(np.arange(len(sites)) + 0.4 - width / 2, sites, rotation=30, ha="right",
                      fontsize=8)  # fmt: skip
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{name}: site values (95% CI over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/heart_disease")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=15)
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
    _figure(results, args.out / "valuation.png")
    shap = results["planted"]["shapley"]
    summary = {
        "heart": {m: v.to_dict() for m, v in results["heart"].items()},
        "planted": {m: v.to_dict() for m, v in results["planted"].items()},
        "heart_vs_exact": comparison,
        "planted_ranking": shap.ranking(),
        "planted_twin_gap": float(abs(shap.mean[0] - shap.mean[6])),
    }
    (args.out / "valuation.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))
    print(json.dumps({"heart_shapley": summary["heart"]["shapley"]["mean"],
                      "heart_vs_exact": comparison, "planted_ranking": shap.ranking(),
                      "planted_twin_gap": round(summary["planted_twin_gap"], 5),
                      "planted_seconds": shap.info["seconds"]}))  # fmt: skip


if __name__ == "__main__":
    main()
