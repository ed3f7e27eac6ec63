"""Test metric vs cumulative uplink bytes for every compressor, with and without error
feedback, on a healthcare-shaped federation (synthetic hospitals, MLP).

50 hospitals (covariate shift, per-site prevalence, size skew, label noise), 10 per round,
FedAvg with 2 local epochs, an MLP 10-64-64-2 (4,994 parameters). Prints the final pooled
AUROC and accuracy, total uplink bytes and the compression ratio per setting, writes the
AUROC-vs-bytes figure (PNG and PDF) and ends with one JSON line.

    python experiments/compression_tradeoff.py [--rounds 60] [--out outputs/compression]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fljax

SETTINGS = {
    "dense (none)": None,
    "top-k 10%": dict(name="topk", fraction=0.1),
    "random-k 10%": dict(name="randk", fraction=0.1),
    "QSGD s=4": dict(name="qsgd", levels=4),
    "sign": dict(name="sign"),
    "PowerSGD r=2": dict(name="powersgd", rank=2),
}


def figure(curves: dict, title: str):
    """Pooled test AUROC against cumulative uplink bytes, one series per setting; error
    feedback dashed (a Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    from fljax._plot import series_figure

    # round 0 (nothing sent yet) has no place on a log axis
    return series_figure({name: (x[1:], y[1:]) for name, (x, y) in curves.items()}, title,
                         "cumulative uplink (bytes, all clients)", "pooled test AUROC",
                         dashed=[n for n in curves if "EF" in n], xscale="log")  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/compression"))
    p.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"comma-separated subset of {list(SETTINGS)} (each with and without EF)",
    )
    args = p.parse_args(argv)
    chosen = args.settings.split(",")
    unknown = sorted(set(chosen) - set(SETTINGS))
    if unknown:
        p.error(f"unknown --settings {unknown}; choose from {list(SETTINGS)}")
    fljax.set_host_device_count()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fed = fljax.data.load("synthetic_hospitals", num_clients=50, mean_size=150, seed=0)
    model = fljax.models.get("mlp", num_classes=2, hidden=(64, 64))
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=2, batch_size=32)
    curves, table = {}, {}
    for label in chosen:
        spec = SETTINGS[label]
        for ef in (False,) if spec is None else (False, True):
            name = label + (" + EF" if ef else "")
            comp = None if spec is None else fljax.compress.get(error_feedback=ef, **spec)
            res = fljax.simulate(
                algo,
                model,
                fed,
                rounds=args.rounds,
                clients_per_round=10,
                seed=args.seed,
                eval_every=args.eval_every,
                compression=comp,
            )
            h = res.history
            curves[name] = ([e["bytes_up"] for e in h], [e["metrics"]["test_auroc"] for e in h])
            last = h[-1]
            table[name] = {
                "test_auroc": last["metrics"]["test_auroc"],
                "test_accuracy": last["metrics"]["test_accuracy"],
                "uplink_bytes": last["bytes_up"],
                "compression_ratio": last.get("compression_ratio", 1.0),
            }
            print(
                f"{name:22s} AUROC {table[name]['test_auroc']:.4f}  accuracy "
                f"{table[name]['test_accuracy']:.4f}  uplink {last['bytes_up'] / 1e6:8.3f} MB"
                f"  ratio {table[name]['compression_ratio']:6.1f}x",
                flush=True,
            )
    fig = figure(curves, f"synthetic hospitals, 50 sites, FedAvg, {args.rounds} rounds")
    for ext in ("png", "pdf"):
        fig.savefig(args.out / f"compression_tradeoff.{ext}", dpi=90)
    wall = time.perf_counter() - t0
    print(f"figure: {args.out / 'compression_tradeoff.png'}  wall {wall:.0f} s")
    print(json.dumps({"settings": table, "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
