"""Personalization under feature shift: who gains from FedBN, FedPer, FedRep, Ditto, APFL and
local fine-tuning, compared with FedAvg and local-only training, site by site.

10 synthetic hospitals (``synthetic_hospitals``: per-site population shift and prevalence, and
``feature_shift``: every site records its features in its own units, x' = a_s * x + b_s with
log a_s, b_s ~ N(0, 1.5^2)), MLP 10-32-32-2 (``mlp_bn`` with batch norm for FedAvg-BN and
FedBN), SGD lr 0.05, batch 32, one local epoch, every site every round. For each data seed the
table reports the pooled test AUROC, the site mean, the worst site's AUROC and accuracy, and
how many sites beat FedAvg (MLP) on AUROC; the numbers are means over ``--seeds`` federations.
"FedAvg + fine-tune" is the FedAvg model after one epoch of local training at each site. Prints
the per-site table of the first seed (FedAvg vs FedBN vs local) and ends with one JSON line.

    python experiments/personalization.py [--seeds 3] [--rounds 40] [--feature-shift 1.5]
        [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import fljax
from fljax.personalize import compare_sites, evaluate_sites, finetune

HP = dict(client_lr=0.05, batch_size=32)
SETTINGS = {  # label: (algorithm, model, extra hyperparameters)
    "FedAvg": ("fedavg", "mlp", {}),
    "FedAvg (MLP-BN)": ("fedavg", "mlp_bn", {}),
    "FedAvg + fine-tune": ("fedavg", "mlp", {}),
    "FedBN": ("fedbn", "mlp_bn", {}),
    "FedPer": ("fedper", "mlp", {}),
    "FedRep": ("fedrep", "mlp", dict(head_epochs=2)),
    "Ditto": ("ditto", "mlp", dict(lam=0.1)),
    "APFL": ("apfl", "mlp", {}),
    "Local only": ("local", "mlp", {}),
}


def federation(seed: int, clients: int, shift: float):
    return fljax.data.load(
        "synthetic_hospitals", num_clients=clients, num_features=10, mean_size=400,
        size_sigma=0.3, prevalence=0.3, signal=4.0, label_noise=0.02, feature_shift=shift,
        seed=seed,
    )  # fmt: skip


def site_scores(label, fed, rounds, seed, hidden):
    """Per-site test AUROC and accuracy ``[C]`` of the setting's (personalized) models."""
    algo_name, model_name, extra = SETTINGS[label]
    model = fljax.models.get(model_name, num_classes=2, hidden=hidden)
    algo = fljax.algorithms.get(algo_name, **HP, **extra)
    r = fljax.simulate(algo, model, fed, rounds=rounds, clients_per_round=fed.num_clients,
                       seed=seed, eval_every=rounds)  # fmt: skip
    if label == "FedAvg + fine-tune":
        tune = fljax.algorithms.get("local", local_epochs=1, **HP)
        tuned = finetune(tune, model, fed, r.params, seed=seed)
        return evaluate_sites(model, fed, tuned, per_client=True), (model, r.params, tuned)
    cm = r.history[-1]["client_metrics"]
    scores = {k: np.asarray(cm[f"test_{k}"], np.float64) for k in ("auroc", "accuracy")}
    return scores, (model, r.params, r.client_params)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--feature-shift", type=float, default=1.5)
    ap.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    ap.add_argument("--out", type=Path, default=None, help="also write the tables here (.md)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                    help="a subset of the rows (FedAvg always runs: the baseline)")  # fmt: skip
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    labels = ["FedAvg"] + [k for k in args.settings if k != "FedAvg"]
    rows: dict[str, list] = {k: [] for k in labels}
    per_site_table = None
    for seed in range(args.seeds):
        fed = federation(seed, args.clients, args.feature_shift)
        n_test = np.asarray(fed.test.num_examples, np.float64)
        scores, models = {}, {}
        for label in labels:
            scores[label], models[label] = site_scores(
                label, fed, args.rounds, seed, tuple(args.hidden)
            )
        base = scores["FedAvg"]["auroc"]
        for label, s in scores.items():
            auc, acc = s["auroc"], s["accuracy"]
            rows[label].append([
                float(np.sum(auc * n_test) / n_test.sum()), float(np.mean(auc)),
                float(np.min(auc)), float(np.min(acc)), int(np.sum(auc > base)),
            ])  # fmt: skip
        if seed == 0 and {"FedBN", "FedRep", "Local only"} <= set(labels):  # site by site
            model, glob, _ = models["FedAvg"]
            bn_model, _, bn_personal = models["FedBN"]
            cmp = compare_sites(model, fed, glob, models["FedRep"][2], models["Local only"][2],
                                metric="auroc")  # fmt: skip
            bn = evaluate_sites(bn_model, fed, bn_personal, per_client=True)["auroc"]
            lines = cmp["table"].splitlines()
            lines[0] = lines[0].replace("personalized", "FedRep") + " FedBN |"
            lines[1] += "---|"
            for i in range(len(cmp["rows"])):
                lines[2 + i] += f" {bn[i]:.4f} |"
            lines[-1] += f" {np.min(bn):.4f} |"
            per_site_table = "\n".join(lines)
    header = ("| setting | pooled AUROC | site-mean AUROC | worst-site AUROC | worst-site "
              "accuracy | sites above FedAvg |")  # fmt: skip
    lines = [header, "|---|---|---|---|---|---|"]
    summary = {}
    for label, vals in rows.items():
        m = np.mean(np.asarray(vals, np.float64), axis=0)
        summary[label] = dict(pooled_auroc=m[0], mean_auroc=m[1], worst_auroc=m[2],
                              worst_accuracy=m[3], sites_above_fedavg=m[4])  # fmt: skip
        lines.append(f"| {label} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | {m[3]:.4f} | "
                     f"{m[4]:.1f} / {args.clients} |")  # fmt: skip
    print(f"Feature-shifted hospitals: {args.clients} sites, shift {args.feature_shift}, "
          f"{args.rounds} rounds, mean over {args.seeds} seeds\n")  # fmt: skip
    print("\n".join(lines))
    if per_site_table is not None:
        print("\nSeed 0, per site (AUROC; gain = FedRep - FedAvg):\n")
        print(per_site_table)
    out = {
        "seeds": args.seeds, "clients": args.clients, "rounds": args.rounds,
        "feature_shift": args.feature_shift, "settings": summary,
        "fedbn_worst_auroc_over_fedavg": summary["FedBN"]["worst_auroc"]
        / summary["FedAvg"]["worst_auroc"] if "FedBN" in summary else None,
        "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        text = "\n".join(lines) + "\n\n" + (per_site_table or "")
        (args.out / "personalization.md").write_text(text)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
