"""Can a hospital that leaves have its data's influence removed? Exact unlearning against
FedEraser on Fed-Heart-Disease.

For each hospital in turn (``--sites``), 15 rounds of FedAvg (5 local epochs of batch 8,
client_lr 0.05, every hospital in every round) of an MLP 13-64-2 over ``--seeds`` seeds:
the original federation and the exact retrain without the hospital run as one program
(``simulate(subsets=...)``); FedEraser (Liu et al. 2021) rebuilds the model from the kept
client updates of every round with ``calibration`` x the local steps (0.5 and 1.0). Reported
per model, averaged over seeds: pooled test accuracy on the other hospitals, accuracy on the
removed hospital's test split, the L2 distance to the retrained model, and the loss-threshold
membership attack's AUROC on the removed hospital's training records against its test
records. ``--noisy`` first replaces the removed hospital's training labels by random ones:
only memorization fits them, so the attack has a signal to lose.

    python experiments/unlearning.py [--seeds 3] [--out outputs/unlearning]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import fljax
from fljax.data import ClientData

ROOT = Path(__file__).resolve().parent.parent


def _noisy(fed, site: int, seed: int = 0):
    x, y, n = (np.asarray(a).copy() for a in fed.train)
    rng = np.random.default_rng(seed)
    y[site, : n[site]] = rng.integers(0, 2, int(n[site]))
    return dataclasses.replace(fed, train=ClientData(x, y, n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/heart_disease")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--sites", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--calibration", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--noisy", action="store_true")
    p.add_argument("--out", type=Path, default=Path("outputs/unlearning"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = fljax.data.load("heart_disease", data_dir=str(args.data_dir), standardize="global",
                           metrics=("accuracy",))  # fmt: skip
    model = fljax.models.get("mlp", num_classes=2, hidden=(64,))
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=5, batch_size=8)
    rows, lines = [], ["| removed | model | remaining accuracy | removed-site accuracy | "
                       "distance to retrained | MIA AUROC | local steps |",
                       "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for site in args.sites:
        fed = _noisy(base, site) if args.noisy else base
        for cal in args.calibration:
            t0 = time.perf_counter()
            u = fljax.unlearning.unlearn(algo, model, fed, site=site, rounds=args.rounds,
                                         seeds=list(range(args.seeds)),
                                         calibration=cal)  # fmt: skip
            s = u.summary()
            models = ("original", "retrained", "federaser") if cal == args.calibration[0] else (
                "federaser",)
            for m in models:
                steps = {"retrained": u.local_steps["retrain"],
                         "federaser": u.local_steps["federaser_calibration"]}.get(m, "")
                name = f"FedEraser ({cal:g})" if m == "federaser" else m
                lines.append(f"| {u.site_name} | {name} | {s[m]['remaining_accuracy']:.3f} | "
                             f"{s[m]['removed_accuracy']:.3f} | "
                             f"{s[m]['distance_to_retrained']:.3f} | {s[m]['mia_auc']:.3f} | "
                             f"{steps} |")  # fmt: skip
            rows.append({"site": u.site_name, "calibration": cal, "summary": s,
                         "local_steps": u.local_steps,
                         "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    (args.out / "unlearning.md").write_text("\n".join(lines) + "\n")
    (args.out / "unlearning.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    print(json.dumps({f"{r['site']}/{r['calibration']:g}": {
        m: round(r["summary"][m]["distance_to_retrained"], 4) for m in r["summary"]}
        for r in rows}))  # fmt: skip


if __name__ == "__main__":
    main()
