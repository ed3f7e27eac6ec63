"""Throughput of one FedAvg round: vmapped fljax vs a sequential per-client loop vs centralized.

The same work three ways, for each number of clients per round K (default: 10, 100, 200 and
1,000 clients x 10 local steps x batch 32, MLP 30-64-64-2):
  vmap        fljax's compiled round (all clients under jax.vmap, rounds under lax.scan);
  sequential  the same jitted client update called once per client from Python, then averaged;
  central     one model, 10 SGD steps on the concatenated batch (K x 32 examples per step).
Prints examples/s of each, their ratios and the compile times per K; the last line is one JSON
object of the figures (``runs``: one record per K).

    python benchmarks/throughput.py [--clients 10 100 200 1000 --local-steps 10 --batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fljax
from fljax._devices import client_mesh, replicated
from fljax.client import make_client_update, plan_local_work
from fljax.data import ClientData
from fljax.simulate import build_block, build_round, init_state


def make_federation(clients: int, per_client: int, features: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(features,))
    xs = [rng.normal(size=(per_client, features)).astype(np.float32) for _ in range(clients)]
    ys = [(x @ w > 0).astype(np.int32) for x in xs]
    return fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=2, name="bench")


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(k: int, steps: int, b: int, rounds_per_block: int, repeats: int) -> dict:
    """Examples/s and compile time of the three ways at ``k`` clients per round."""
    fed = make_federation(k, steps * b)
    model = fljax.models.get("mlp", num_classes=2, hidden=(64, 64))
    algo = fljax.algorithms.get(
        "fedavg", client_lr=0.05, local_epochs=None, local_steps=steps, batch_size=b
    )
    params = model.init(jax.random.key(0), fed.sample())
    examples_per_round = k * steps * b
    train = ClientData(*(jnp.asarray(a) for a in fed.train))

    # 1. fljax: the compiled round, rounds_per_block rounds per call.
    state = init_state(algo, params, k)
    mesh = client_mesh(k)
    if mesh is not None:
        state, train_rep = jax.device_put((state, train), replicated(mesh))
    else:
        train_rep = train
    run_block = jax.jit(build_block(build_round(algo, model, fed, k, mesh)))
    ids = jnp.arange(rounds_per_block, dtype=jnp.int32)
    t0 = time.perf_counter()
    compiled = run_block.lower(state, jax.random.key(1), ids, train_rep).compile()
    compile_vmap = time.perf_counter() - t0
    t_vmap = best_time(lambda: compiled(state, jax.random.key(1), ids, train_rep), repeats)
    t_vmap /= rounds_per_block

    # 2. Sequential: the same jitted client update, one call per client, then a weighted mean.
    plan = plan_local_work(
        fed.train.num_examples,
        fed.train.x.shape[1],
        local_epochs=None,
        local_steps=steps,
        batch_size=b,
    )
    client = jax.jit(make_client_update(model, "classification", algo.client_optimizer, plan))
    xs = [train.x[c] for c in range(k)]
    ys = [train.y[c] for c in range(k)]
    ns = [train.num_examples[c] for c in range(k)]
    keys = [jax.random.key(c) for c in range(k)]
    accumulate = jax.jit(lambda acc, d, w: jax.tree.map(lambda a, x: a + w * x, acc, d))
    finish = jax.jit(lambda acc, total: jax.tree.map(lambda a, p: p + a / total, acc, params))
    t0 = time.perf_counter()
    jax.block_until_ready(client(params, xs[0], ys[0], ns[0], keys[0]))
    zero = jax.tree.map(jnp.zeros_like, params)
    jax.block_until_ready(finish(accumulate(zero, zero, 1.0), 1.0))
    compile_seq = time.perf_counter() - t0

    def sequential_round():
        acc = zero
        for c in range(k):
            out = client(params, xs[c], ys[c], ns[c], keys[c])
            acc = accumulate(acc, out.delta, ns[c].astype(jnp.float32))
        return finish(acc, float(k * steps * b // steps))

    t_seq = best_time(sequential_round, repeats)

    # 3. Centralized: one model, `steps` SGD steps on the concatenated batch of all clients.
    opt = optax.sgd(0.05)
    x_all = train.x.reshape(k, steps, b, -1).transpose(1, 0, 2, 3).reshape(steps, k * b, -1)
    y_all = train.y.reshape(k, steps, b).transpose(1, 0, 2).reshape(steps, k * b)

    def central(params):
        def step(carry, batch):
            p, s = carry
            xb, yb = batch
            loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
                model.apply(q, xb), yb
            ).mean()
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), (x_all, y_all))
        return p

    t0 = time.perf_counter()
    central_c = jax.jit(central).lower(params).compile()
    compile_central = time.perf_counter() - t0
    t_central = best_time(lambda: central_c(params), repeats)

    eps = {
        name: examples_per_round / t
        for name, t in (("vmap", t_vmap), ("sequential", t_seq), ("centralized", t_central))
    }
    figures = {
        "clients": k,
        "local_steps": steps,
        "batch": b,
        "backend": jax.default_backend(),
        "devices": 1 if mesh is None else mesh.size,
        "vmap_examples_per_s": round(eps["vmap"]),
        "sequential_examples_per_s": round(eps["sequential"]),
        "centralized_examples_per_s": round(eps["centralized"]),
        "vmap_s_per_round": t_vmap,
        "sequential_s_per_round": t_seq,
        "vmap_over_sequential": round(eps["vmap"] / eps["sequential"], 3),
        "vmap_over_centralized": round(eps["vmap"] / eps["centralized"], 3),
        "compile_vmap_s": round(compile_vmap, 3),
        "compile_sequential_s": round(compile_seq, 3),
        "compile_centralized_s": round(compile_central, 3),
    }
    return figures


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100, 200, 1000])
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds-per-block", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--host-devices",
        type=int,
        default=None,
        help="CPU devices for the client axis (default: one per core)",
    )
    args = p.parse_args(argv)
    fljax.set_host_device_count(args.host_devices)
    runs = [
        measure(k, args.local_steps, args.batch, args.rounds_per_block, args.repeats)
        for k in args.clients
    ]
    print(
        f"FedAvg round, {args.local_steps} local steps x batch {args.batch}, MLP 30-64-64-2, "
        f"{jax.default_backend()}, {os.cpu_count()} cores"
    )
    print("| clients / round | fljax examples/s | vmap / sequential | vmap / centralized | "
          "s / round | compile s (fljax) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for f in runs:
        print(f"| {f['clients']} | {f['vmap_examples_per_s']:,} | {f['vmap_over_sequential']:.2f}x "
              f"| {f['vmap_over_centralized']:.2f}x | {f['vmap_s_per_round']:.4f} | "
              f"{f['compile_vmap_s']:.2f} |")  # fmt: skip
    figures = {"runs": runs, "backend": jax.default_backend(), "cores": os.cpu_count()}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
