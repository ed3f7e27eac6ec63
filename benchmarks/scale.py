"""Scale: a federation of 10,000 hospitals, 100 / 1,000 / 10,000 of them per round.

``synthetic_hospitals`` with 10,000 sites (50 patients on average, lognormal sizes with sigma
0.5, 10 features), MLP 10-64-64-2, FedAvg with one local epoch of batch 16: fljax's compiled
block of ``--rounds`` rounds (selection, gathering the cohort's data on device, local
training, aggregation; the client axis split over the CPU cores), best of 3 calls after a
warm-up, and one evaluation of the model on all 10,000 sites' test splits. Each cohort size
runs in a fresh process so that its peak resident memory (``ru_maxrss``) is its own. Prints
seconds per round, compile time, peak RSS and how time per round grows with clients per
round; the last line is one JSON object.

    python benchmarks/scale.py [--clients 10000 --per-round 100 1000 10000 --rounds 5]
        [--chunk N]   # train the cohort N clients at a time (bounded activation memory)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def one(total: int, per_round: int, rounds: int, chunk: int | None) -> dict:
    """Runs one configuration in this process and returns its figures."""
    import fljax

    fljax.set_host_device_count()
    import jax
    import jax.numpy as jnp

    from fljax._devices import client_mesh, replicated
    from fljax.client import evaluate_fn
    from fljax.data import ClientData
    from fljax.simulate import build_block, build_round, init_state

    t0 = time.perf_counter()
    fed = fljax.data.load(
        "synthetic_hospitals", num_clients=total, num_features=10, mean_size=50,
        size_sigma=0.5, seed=0,
    )  # fmt: skip
    data_s = time.perf_counter() - t0
    model = fljax.models.get("mlp", num_classes=2, hidden=(64, 64))
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=1, batch_size=16)
    params = model.init(jax.random.key(0), fed.sample())
    state = init_state(algo, params, total)
    train = ClientData(*(jnp.asarray(a) for a in fed.train))
    test = ClientData(*(jnp.asarray(a) for a in fed.test))
    mesh = client_mesh(per_round)
    if mesh is not None:
        state, train, test = jax.device_put((state, train, test), replicated(mesh))
    block = jax.jit(build_block(build_round(algo, model, fed, per_round, mesh,
                                            client_chunk=chunk)))  # fmt: skip
    ids = jnp.arange(rounds, dtype=jnp.int32)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = block.lower(state, key, ids, train).compile()
    compile_s = time.perf_counter() - t0
    state, _ = compiled(state, key, ids, train)  # warm-up (and a trained model to score)
    jax.block_until_ready(state)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, key, ids, train))
        times.append(time.perf_counter() - t0)
    score = jax.jit(evaluate_fn(model, fed.task, False, fed.metrics))
    jax.block_until_ready(score(state.params, *test))
    t0 = time.perf_counter()
    metrics = jax.block_until_ready(score(state.params, *test))
    eval_s = time.perf_counter() - t0
    return {
        "total_clients": total,
        "clients_per_round": per_round,
        "client_chunk": chunk,
        "rounds_per_call": rounds,
        "devices": 1 if mesh is None else mesh.size,
        "padded_examples_per_client": int(fed.train.x.shape[1]),
        "data_s": round(data_s, 2),
        "compile_s": round(compile_s, 2),
        "s_per_round": min(times) / rounds,
        "eval_s": eval_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "mean_site_auroc": float(jnp.nanmean(metrics["auroc"])),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=10_000, help="sites in the federation")
    ap.add_argument("--per-round", type=int, nargs="+", default=[100, 1000, 10_000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:  # child process: one configuration
        print(json.dumps(one(args.clients, args.one, args.rounds, args.chunk)))
        return {}
    runs = []
    for k in args.per_round:
        cmd = [sys.executable, __file__, "--clients", str(args.clients), "--rounds",
               str(args.rounds), "--one", str(k)]  # fmt: skip
        if args.chunk:
            cmd += ["--chunk", str(args.chunk)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{k} clients per round failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = runs[0]
    print(f"{args.clients:,} hospitals, MLP 10-64-64-2, FedAvg 1 local epoch (batch 16), "
          f"{os.cpu_count()} CPU cores")  # fmt: skip
    print("| clients / round | s / round | x time | x clients | compile s | eval s (10k sites) "
          "| peak RSS GiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        r["time_over_smallest"] = r["s_per_round"] / base["s_per_round"]
        r["clients_over_smallest"] = r["clients_per_round"] / base["clients_per_round"]
        print(f"| {r['clients_per_round']:,} | {r['s_per_round']:.3f} | "
              f"{r['time_over_smallest']:.1f} | {r['clients_over_smallest']:.0f} | "
              f"{r['compile_s']:.1f} | {r['eval_s']:.2f} | {r['peak_rss_gib']:.2f} |")  # fmt: skip
    figures = {"runs": runs, "cores": os.cpu_count()}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
