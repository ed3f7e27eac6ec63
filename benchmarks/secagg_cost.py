"""Secure-aggregation cost per round as the cohort grows: SecAgg (all pairs) vs SecAgg+
(random Harary graph of degree 2 ceil(log2 K)).

For each cohort size K it runs one simulated secure sum (d = 64 ring elements per client, 10%
of the clients dropping out after masking) and prints the protocol counts it reports (PRG
expansions by clients and server, recovered masks, recovery messages), the bytes one client
sends (d = 10,000 parameters, 32-bit ring) and the wall time. It ends with a JSON line whose
``growth_*`` entries are log-log slopes of the client PRG expansions against K: 2 for
all-pairs (quadratic), about 1 for SecAgg+ (K log K).

    python benchmarks/secagg_cost.py [--sizes 16,64,256,1024]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from fljax import privacy as P

D_MEASURE = 64
D_BYTES = 10_000


def measure(secagg, k: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    enc = jnp.asarray(rng.integers(0, 2**32, size=(k, D_MEASURE), dtype=np.uint64), jnp.uint32)
    included = np.ones(k, bool)
    included[rng.choice(k, max(1, k // 10), replace=False)] = False
    run = jax.jit(lambda e, inc, ids, key: P.secure_ring_sum(e, inc, ids, key, secagg))
    args = (enc, jnp.asarray(included), jnp.arange(k, dtype=jnp.int32), jax.random.key(seed))
    ring_sum, _, stats = jax.block_until_ready(run(*args))  # compile
    t0 = time.perf_counter()
    ring_sum, _, stats = jax.block_until_ready(run(*args))
    seconds = time.perf_counter() - t0
    expected = np.asarray(enc, np.uint64)[included].sum(0) % 2**32
    assert np.array_equal(np.asarray(ring_sum, np.uint64), expected), "secure sum not exact"
    row = {name: int(v) for name, v in stats._asdict().items()}
    bytes_ = P.message_bytes(secagg, D_BYTES, k)
    row.update(
        K=k,
        degree=P.graph_degree(secagg, k),
        client_bytes=bytes_["advertise_keys"] + bytes_["share_keys"] + bytes_["masked_input"],
        round_seconds=seconds,
    )
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="16,64,256,1024")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    out = {}
    for secagg in (P.get("secagg"), P.get("secagg_plus")):
        rows = [measure(secagg, k) for k in sizes]
        out[secagg.name] = rows
        print(f"{secagg.name}:")
        print("     K  degree  PRG(clients)  PRG(server)  recovered  recovery msgs  "
              "client bytes  seconds")  # fmt: skip
        for r in rows:
            print(
                f"{r['K']:>6} {r['degree']:>7} {r['prg_client']:>13} {r['prg_server']:>12} "
                f"{r['recovered_pairs']:>10} {r['recovery_messages']:>14} "
                f"{r['client_bytes']:>13} {r['round_seconds']:>8.3f}"
            )
        slope = np.polyfit(np.log(sizes), np.log([r["prg_client"] for r in rows]), 1)[0]
        out[f"growth_{secagg.name}"] = float(slope)
        print(f"  client PRG expansions grow as K^{slope:.2f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
