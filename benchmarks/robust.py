"""Round time of the robust aggregators at 1,000 clients per round, as a ratio to FedAvg's.

1,000 clients (32 examples of 64 features each, labels from a random linear rule), all
selected every round, 2 local SGD steps of batch 16 on an MLP 64-32-2 (2,146 parameters); one
compiled block of ``--rounds`` rounds per aggregator (local training included: what a user's
round costs), best of ``--repeats``. The median and trimmed mean select their order
statistics by bisection (32 passes of O(K d)); Krum, Multi-Krum and Bulyan need the K x K
pairwise distances (one Gram matrix, O(K^2 d)), Bulyan then K - 2f sequential Krum selections
on it (f = 10% of the clients for the three). Ends with one JSON line.

    python benchmarks/robust.py [--clients 1000 --rounds 5 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import fljax
from fljax.data import ClientData
from fljax.engine import build_block, build_round
from fljax.engine._round import initial_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import best_time, make_federation  # noqa: E402  (the same timer and data)

RULES = {
    "fedavg": None,
    "median": dict(name="median"),
    "trimmed_mean": dict(name="trimmed_mean", trim=0.1),
    "krum": dict(name="krum"),  # f = 10% of the clients (set in main)
    "multi_krum": dict(name="multi_krum"),
    "bulyan": dict(name="bulyan"),
    "geometric_median": dict(name="geometric_median", iterations=3),
    "centered_clipping": dict(name="centered_clipping", tau=1.0, iterations=3),
    "norm_bounding": dict(name="norm_bounding", max_norm=1.0),
    "cc+bucketing": dict(name="centered_clipping", tau=1.0, bucket_size=2),
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rules", default=",".join(RULES))
    args = ap.parse_args(argv)
    k = args.clients
    fed = make_federation(k, 32, features=64)
    model = fljax.models.get("mlp", num_classes=2, hidden=(32,))
    base = fljax.algorithms.get("fedavg", client_lr=0.05, local_steps=2, local_epochs=None,
                                batch_size=16)  # fmt: skip
    params = model.init(jax.random.key(0), fed.sample())
    train = ClientData(*(jnp.asarray(a) for a in fed.train))
    ids = jnp.arange(args.rounds, dtype=jnp.int32)
    out = {}
    for name in args.rules.split(","):
        spec = RULES[name]
        if spec is not None and spec["name"] in ("krum", "multi_krum", "bulyan"):
            spec = {**spec, "f": max(1, k // 10)}
        algo = base if spec is None else base._replace(
            aggregator=fljax.aggregate.get(**spec).transform)  # fmt: skip
        round_fn = build_round(algo, model, fed, k)
        state = initial_state(round_fn, algo, params, k, jax.random.key(0))
        t0 = time.perf_counter()
        block = jax.jit(build_block(round_fn)).lower(state, jax.random.key(1), ids,
                                                      train).compile()  # fmt: skip
        compile_s = time.perf_counter() - t0
        s = best_time(lambda block=block, state=state: block(state, jax.random.key(1), ids,
                                                               train), args.repeats)  # fmt: skip
        out[name] = {"round_s": s / args.rounds, "compile_s": round(compile_s, 2)}
        print(f"{name:>18}: {1e3 * s / args.rounds:8.1f} ms/round  compile {compile_s:5.1f} s",
              flush=True)  # fmt: skip
    ref = out.get("fedavg", {}).get("round_s")
    if ref:
        for v in out.values():
            v["vs_fedavg"] = round(v["round_s"] / ref, 2)
    result = {"clients": k, "rounds": args.rounds, "params": 64 * 32 + 32 + 32 * 2 + 2,
              "device": jax.devices()[0].platform, "rules": out}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
