"""The attack x defense matrix: final test accuracy of every robust aggregator under every
poisoning attack, on a non-IID federation of 20 sites of which 20% are malicious.

Default federation (``--dataset digits``): scikit-learn's 8x8 handwritten digits (1,797
images, 10 classes, shipped with scikit-learn: the MNIST-like setting of the papers below),
split into 20 sites by label shards (2 classes per site: strongly non-IID), an MLP 64-64-10,
FedAvg with 5 local SGD steps of batch 32 (client_lr 0.1), all 20 sites in every round,
40 rounds; 4 malicious sites drawn from the attack's seed. ``--dataset synthetic_hospitals``
(AUROC) and ``breast_cancer`` (Dirichlet(1.0) label skew) are the tabular alternatives. Each
cell is ONE vmapped program over 5 training seeds (``fljax.simulate(..., seeds=[0..4])``):
the mean and sample std (ddof 1) of the final pooled test metric. Writes ``robustness.md``
(the table), ``robustness.png`` (the heat map) and ``robustness.json``, and ends with one
JSON line.

    python experiments/robustness.py [--rounds 40] [--seeds 5] [--out outputs/robustness]
        [--dataset digits] [--attacks none,alie,...] [--defenses mean,median,...]

What the papers lead one to expect (Karimireddy, He and Jaggi 2022, Table 1 / Fig. 2;
Baruch et al. 2019; Shejwalkar and Houmansadr 2021): ALIE and Min-Max, which hide inside the
spread of the benign updates, break Krum and the coordinate-wise median under non-IID data;
centered clipping with bucketing holds best. See docs/reproductions/robustness.md for the
measured matrix and where it differs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import fljax

ATTACKS = {
    "none": None,
    "sign_flip": dict(name="sign_flip", scale=4.0),
    "gaussian": dict(name="gaussian", sigma=1.0),
    "label_flip": dict(name="label_flip"),
    "ipm": dict(name="ipm", epsilon=0.1),
    "alie": dict(name="alie"),
    "min_max": dict(name="min_max", perturbation="std"),
    "min_sum": dict(name="min_sum", perturbation="std"),
}
F = 4  # malicious hospitals of 20, what the selection rules are told to tolerate
DEFENSES = {
    "mean": None,
    "median": dict(name="median"),
    "trimmed_mean": dict(name="trimmed_mean", trim=0.2),
    "krum": dict(name="krum", f=F),
    "multi_krum": dict(name="multi_krum", f=F),
    "bulyan": dict(name="bulyan", f=F),
    "geometric_median": dict(name="geometric_median", iterations=3),
    "norm_bounding": dict(name="norm_bounding", max_norm=1.0),
    "fltrust": dict(name="fltrust", root_size=100),
    "centered_clipping": dict(name="centered_clipping", tau=0.05, iterations=3),
    "cc+bucketing": dict(name="centered_clipping", tau=0.05, iterations=3, bucket_size=2),
}


def digits(num_clients: int):
    """scikit-learn's digits (pixels / 16) split by label shards, 2 classes per site."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32) / 16.0, d.target.astype(np.int32)
    return fljax.data.federate(x, y, num_clients=num_clients, partition="shards",
                               classes_per_client=2, standardize="none", num_classes=10,
                               name="digits", seed=0)  # fmt: skip


def _subset(p, value: str, table: dict, flag: str) -> list[str]:
    chosen = value.split(",")
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        p.error(f"unknown {flag} {unknown}; choose from {list(table)}")
    return chosen


def heat_map(matrix: np.ndarray, rows: list, cols: list, path: Path, title: str,
             metric: str) -> None:  # fmt: skip
    fig = figure(matrix, rows, cols, title, metric)
    fig.savefig(path, dpi=130)
    import matplotlib.pyplot as plt

    plt.close(fig)


def figure(matrix: np.ndarray, rows: list, cols: list, title: str, metric: str):
    """The defense (row) x attack (column) matrix of ``metric``, each cell annotated,
    coloured from chance (red) to 1 (green) (a Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fljax._plot import metric_label

    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(cols), 1.4 + 0.45 * len(rows)))
    low = 0.5 if metric.endswith("auroc") else 0.0  # chance
    im = ax.imshow(matrix, cmap="RdYlGn", vmin=low, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("attack")
    ax.set_ylabel("defense (aggregator)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=metric_label(metric))
    fig.tight_layout()
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--dataset", choices=("digits", "breast_cancer", "synthetic_hospitals"),
                   default="digits")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("outputs/robustness"))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--defenses", default=",".join(DEFENSES))
    args = p.parse_args(argv)
    attacks = _subset(p, args.attacks, ATTACKS, "--attacks")
    defenses = _subset(p, args.defenses, DEFENSES, "--defenses")
    fljax.set_host_device_count()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.dataset == "digits":
        fed = digits(args.clients)
    elif args.dataset == "synthetic_hospitals":
        fed = fljax.data.load("synthetic_hospitals", num_clients=args.clients, mean_size=200,
                              seed=0)  # fmt: skip
    else:  # label skew: Dirichlet(1.0) class proportions per hospital
        fed = fljax.data.load("breast_cancer", num_clients=args.clients, partition="dirichlet",
                              alpha=1.0, min_examples=8, seed=0)  # fmt: skip
    metric = "test_auroc" if args.dataset == "synthetic_hospitals" else "test_accuracy"
    model = fljax.models.get("mlp", num_classes=fed.num_classes, hidden=(64,))
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_steps=5, local_epochs=None,
                                batch_size=32)  # fmt: skip
    seeds = list(range(args.seeds))
    mean = np.full((len(defenses), len(attacks)), np.nan)
    std = np.full_like(mean, np.nan)
    for i, d in enumerate(defenses):
        for j, a in enumerate(attacks):
            agg = None if DEFENSES[d] is None else fljax.aggregate.get(**DEFENSES[d])
            att = None if ATTACKS[a] is None else fljax.attacks.get(fraction=0.2,
                                                                   **ATTACKS[a])  # fmt: skip
            t = time.perf_counter()
            runs = fljax.simulate(algo, model, fed, rounds=args.rounds,
                                  clients_per_round=args.clients, eval_every=args.rounds,
                                  seeds=seeds, aggregator=agg, attack=att)  # fmt: skip
            auc = np.array([r.final_metrics[metric] for r in runs], np.float64)
            mean[i, j] = auc.mean()
            std[i, j] = auc.std(ddof=1) if len(auc) > 1 else 0.0
            print(f"{d:>18} x {a:<10} {metric} {mean[i, j]:.3f} ± {std[i, j]:.3f} "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)  # fmt: skip
    lines = ["| defense \\ attack | " + " | ".join(attacks) + " |",
             "| --- |" + " --- |" * len(attacks)]  # fmt: skip
    for i, d in enumerate(defenses):
        cells = [f"{mean[i, j]:.3f} ± {std[i, j]:.3f}" for j in range(len(attacks))]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (args.out / "robustness.md").write_text(table + "\n")
    title = (f"final {metric}, {args.dataset}, {args.clients} sites, 20% malicious, "
             f"{args.rounds} rounds, mean of {args.seeds} seeds")  # fmt: skip
    heat_map(mean, defenses, attacks, args.out / "robustness.png", title, metric)
    result = {"dataset": args.dataset, "metric": metric, "attacks": attacks,
              "defenses": defenses, "mean": mean.round(4).tolist(),
              "std": std.round(4).tolist(), "rounds": args.rounds, "seeds": args.seeds,
              "clients": args.clients, "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    (args.out / "robustness.json").write_text(json.dumps(result, indent=1))
    print(table)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
