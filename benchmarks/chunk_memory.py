"""Memory of one compiled FedAvg round: all clients at once vs chunks vs streaming aggregation.

256 clients per round, MLP 64-512-512-2 (297k parameters), 2 local steps of batch 16. XLA's
memory analysis of the compiled round (temporaries; nothing runs): the cohort under one
``vmap``; ``client_chunk=32`` with an aggregator that needs the ``[K, P]`` stack of deltas;
``client_chunk=32`` with the weighted mean, whose sum streams through a ``lax.scan`` carry.
Ends with one JSON line.

    python benchmarks/chunk_memory.py [--clients 256 --chunk 32 --hidden 512]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

import fljax
from fljax.data import ClientData
from fljax.simulate import build_block, build_round, init_state


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=512)
    args = ap.parse_args(argv)
    k = args.clients
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(32, 64)).astype(np.float32) for _ in range(k)]
    ys = [rng.integers(0, 2, 32).astype(np.int32) for _ in range(k)]
    fed = fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=2)
    model = fljax.models.get("mlp", num_classes=2, hidden=(args.hidden, args.hidden))
    algo = fljax.algorithms.get("fedavg", local_steps=2, local_epochs=None, batch_size=16)
    params = model.init(jax.random.key(0), fed.sample())
    state = init_state(algo, params, k)
    train = ClientData(*(jnp.asarray(a) for a in fed.train))
    ids = jnp.arange(1, dtype=jnp.int32)
    agg = algo.aggregator
    stacked = algo._replace(aggregator=fljax.Transform(agg.init, agg.update))  # not linear

    def temp_mib(a, chunk):
        block = jax.jit(build_block(build_round(a, model, fed, k, client_chunk=chunk)))
        mem = block.lower(state, jax.random.key(0), ids, train).compile().memory_analysis()
        return mem.temp_size_in_bytes / 2**20

    p = fljax.models.num_params(params)
    out = {
        "clients": k, "params": p, "delta_stack_mib": k * p * 4 / 2**20,
        "all_at_once_mib": temp_mib(algo, None),
        "chunked_stacked_mib": temp_mib(stacked, args.chunk),
        "chunked_streaming_mib": temp_mib(algo, args.chunk),
    }  # fmt: skip
    print(f"{k} clients, {p:,} parameters, chunks of {args.chunk} (temporaries, MiB)")
    print("| execution | MiB |\n|---|---|")
    print(f"| one vmap over all clients | {out['all_at_once_mib']:.0f} |")
    print(f"| chunks, deltas stacked for the aggregator | {out['chunked_stacked_mib']:.0f} |")
    print(f"| chunks, streaming weighted mean | {out['chunked_streaming_mib']:.0f} |")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
