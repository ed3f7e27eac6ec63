"""Time to accuracy under system heterogeneity: synchronous FedAvg with and without deadlines,
FedBuff and FedAsync, on a skewed hospital federation, measured on the simulated clock.

100 synthetic hospitals (covariate shift, per-site prevalence, size skew), MLP 10-64-2, one local
epoch (batch 16). Device profiles ``kind="hospital"``: training speed, uplink and downlink are
medians (1 example/s, 20 kB/s, 200 kB/s) times independent LogNormal(0, 1) factors, so a few
sites are 10x slower than the median; every site is reachable with probability ~0.9 each round.
Every setting processes the same number of client updates (``--updates``); the table gives the
final pooled AUROC, the simulated hours it took, and the hours to first reach ``--target``
AUROC. Writes the AUROC-vs-hours figure and ends with one JSON line.

    python experiments/time_to_accuracy.py [--updates 600] [--out docs/figures]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

import fljax
from fljax.simulate import full_work_times, plan_local_work_for

ROOT = Path(__file__).resolve().parent.parent


def settings(num_clients: int, k: int, deadline: float):
    hp = dict(client_lr=0.1, local_epochs=1, batch_size=16)
    fedavg = fljax.algorithms.get("fedavg", **hp)
    return {
        "FedAvg (wait for all)": (fedavg, dict(), k),
        "FedAvg, deadline, drop": (fedavg, dict(deadline=deadline), k),
        "FedAvg, deadline, partial": (
            fedavg, dict(deadline=deadline, deadline_policy="partial"), k,
        ),
        "FedBuff (M=2K, B=K)": (
            fljax.algorithms.get("fedbuff", buffer_size=k, concurrency=2 * k, **hp), {}, k,
        ),
        "FedAsync (M=2K)": (
            fljax.algorithms.get("fedasync", concurrency=2 * k, mixing=0.5, **hp), {}, 1,
        ),
    }  # fmt: skip


def figure(curves: dict, target: float, title: str):
    """Pooled test AUROC against simulated hours, one series per setting (a Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    from fljax._plot import series_figure

    return series_figure(curves, title, "simulated wall-clock time (hours)",
                         "pooled test AUROC", hlines=[(target, f"target {target}")])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=10, help="K: cohort / buffer size")
    ap.add_argument("--updates", type=int, default=600, help="client updates per setting")
    ap.add_argument("--target", type=float, default=0.75, help="AUROC to reach")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    args = ap.parse_args(argv)
    fljax.set_host_device_count()
    t0 = time.perf_counter()
    fed = fljax.data.load("synthetic_hospitals", num_clients=args.clients, mean_size=150, seed=0)
    model = fljax.models.get("mlp", num_classes=2, hidden=(64,))
    prof = fljax.system.profiles(
        args.clients, kind="hospital", seed=args.seed, speed=1.0, uplink=2e4, downlink=2e5,
        availability=0.9, sigma=1.0,
    )  # fmt: skip
    # Deadline: the median client's full-round time (half the sites would be late).
    spec = fljax.data.ClientData(*(np.asarray(a) for a in fed.train))
    algo0 = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=16)
    wire = (float(fljax.models.param_bytes(model.init(jax.random.key(0), fed.sample()))),) * 2
    times = full_work_times(fljax.system.system(prof), spec, plan_local_work_for(algo0, spec), wire)
    deadline = float(np.median(times))
    print(f"full-round time per site: median {np.median(times) / 3600:.2f} h, "
          f"90th pct {np.percentile(times, 90) / 3600:.2f} h, max {times.max() / 3600:.2f} h; "
          f"deadline {deadline / 3600:.2f} h")  # fmt: skip
    results, curves = {}, {}
    for name, (algo, sys_kw, per_step) in settings(args.clients, args.per_round, deadline).items():
        steps = args.updates // per_step
        res = fljax.simulate(
            algo, model, fed, rounds=steps, clients_per_round=args.per_round, seed=args.seed,
            eval_every=max(1, steps // 20), system=fljax.system.system(prof, **sys_kw),
        )  # fmt: skip
        hours = [e["sim_time_s"] / 3600 for e in res.history]
        auroc = [e["metrics"]["test_auroc"] for e in res.history]
        reached = next((h for h, a in zip(hours, auroc, strict=True) if a >= args.target), None)
        curves[name] = (hours, auroc)
        last = res.history[-1]
        results[name] = {
            "final_auroc": auroc[-1],
            "final_accuracy": last["metrics"]["test_accuracy"],
            "sim_hours": hours[-1],
            "hours_to_target": reached,
            "aggregated_updates": int(res.contributed.sum()),
            "staleness_mean": last.get("async", {}).get("staleness_mean", 0.0),
        }
        r = results[name]
        print(f"{name:28s} AUROC {r['final_auroc']:.4f}  {r['sim_hours']:7.2f} h  "
              f"to {args.target}: {'never' if reached is None else f'{reached:.2f} h':>8}  "
              f"updates used {r['aggregated_updates']:4d}  staleness {r['staleness_mean']:.2f}",
              flush=True)  # fmt: skip
    fig = figure(curves, args.target, f"{args.clients} synthetic hospitals, skewed device "
                 f"profiles, {args.updates} client updates each")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "time_to_accuracy.png", dpi=100)
    wall = time.perf_counter() - t0
    print(f"figure: {args.out / 'time_to_accuracy.png'}  wall {wall:.0f} s")
    out = {"settings": results, "deadline_h": deadline / 3600, "wall_s": round(wall, 1)}
    print(json.dumps(out, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    return out


if __name__ == "__main__":
    main()
