"""Many runs in one program: seeds and learning rates vmapped vs separate ``simulate`` calls.

FedAvg on ``synthetic_hospitals`` (100 sites, 10 per round), MLP 10-64-64-2, one local epoch of
batch 16, ``--rounds`` rounds; wall time including compilation, all in one process: one seed,
the seeds as separate calls, the seeds as ``simulate(seeds=...)``, and seeds x learning rates
as ``simulate(seeds=..., sweep={"client_lr": [...]})``. Ends with one JSON line.

    python benchmarks/many_runs.py [--seeds 5 --rounds 50 --lrs 0.01 0.03 0.1]
"""

from __future__ import annotations

import argparse
import json
import time

import fljax


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    args = ap.parse_args(argv)
    fljax.set_host_device_count()
    fed = fljax.data.load("synthetic_hospitals", num_clients=args.clients, seed=0)
    model = fljax.models.get("mlp", num_classes=2, hidden=(64, 64))
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, batch_size=16)
    kw = dict(rounds=args.rounds, clients_per_round=10, eval_every=10)
    seeds = list(range(args.seeds))

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    one_s, _ = timed(lambda: fljax.simulate(algo, model, fed, seed=0, **kw))
    separate_s, _ = timed(lambda: [fljax.simulate(algo, model, fed, seed=s, **kw) for s in seeds])
    vmapped_s, runs = timed(lambda: fljax.simulate(algo, model, fed, seeds=seeds, **kw))
    sweep_s, swept = timed(lambda: fljax.simulate(algo, model, fed, seeds=seeds,
                                                  sweep={"client_lr": args.lrs}, **kw))  # fmt: skip
    print(f"FedAvg, {args.clients} hospitals, 10 per round, {args.rounds} rounds")
    print("| what | wall s |\n|---|---|")
    print(f"| one seed | {one_s:.1f} |")
    print(f"| {len(seeds)} seeds, separate calls | {separate_s:.1f} |")
    print(f"| {len(seeds)} seeds, seeds=[...] | {vmapped_s:.1f} |")
    print(f"| {len(seeds)} seeds x {len(args.lrs)} learning rates, seeds + sweep | {sweep_s:.1f} |")
    out = {
        "one_s": one_s, "separate_s": separate_s, "seeds_vmapped_s": vmapped_s,
        "seeds_x_lrs_vmapped_s": sweep_s, "runs_in_sweep": len(swept),
        "vmapped_over_separate": separate_s / vmapped_s,
        "final_auroc": [r.final_metrics["test_auroc"] for r in runs],
    }  # fmt: skip
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
