"""Imaging rounds: a CNN round per client-mapping strategy vs JAX's own per-client loop.

The workload of the imaging issue: FedAvg with ``fljax.models.get("cnn", features=(16, 32),
dense=64)`` on 28x28x1 images, K clients x 5 local steps x batch 32. Measured, in one process:
  <strategy>   fljax's compiled round with ``client_map=<strategy>`` (vmap, device_vmap,
               sequential), the clients split over the host devices;
  loop         the same jitted client update called once per client from Python, averaged;
  central      one model, 5 SGD steps on the concatenated batch (32 K examples per step).
Prints examples/s and ratios; the last line is one JSON object (``<this>_over_<that>``).

    python benchmarks/imaging.py [--clients 8 32 --local-steps 5 --batch 32 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fljax
from fljax._devices import client_mesh, replicated
from fljax.client import make_client_update, plan_local_work
from fljax.data import ClientData
from fljax.engine import CLIENT_MAPS, build_block, build_round, init_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import best_time  # noqa: E402  (the same best-of-n timer)


def make_federation(clients: int, per_client: int, seed: int = 0):
    """``clients`` sites of ``per_client`` 28x28x1 images, labels from a fixed random filter."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(28 * 28,))
    xs = [rng.normal(size=(per_client, 28, 28, 1)).astype(np.float32) for _ in range(clients)]
    ys = [(x.reshape(len(x), -1) @ w > 0).astype(np.int32) for x in xs]
    return fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=2, name="images")


def strategy_round(k, fed, model, algo, strategy, repeats) -> tuple[float, float]:
    """Seconds per round and compile seconds of fljax's round with ``client_map=strategy``."""
    params = model.init(jax.random.key(0), fed.sample())
    mesh = client_mesh(k)
    train = ClientData(*(jnp.asarray(a) for a in fed.train))
    state = init_state(algo, params, k)
    if mesh is not None:
        state, train = jax.device_put((state, train), replicated(mesh))
    round_fn = build_round(algo, model, fed, k, mesh, client_map=strategy)
    block = jax.jit(build_block(round_fn))
    ids = jnp.arange(1, dtype=jnp.int32)
    t0 = time.perf_counter()
    compiled = block.lower(state, jax.random.key(1), ids, train).compile()
    compile_s = time.perf_counter() - t0
    return best_time(lambda: compiled(state, jax.random.key(1), ids, train), repeats), compile_s


def loop_round(k, fed, model, steps, b, repeats) -> float:
    """Seconds per round of the jitted client update called per client, then averaged."""
    params = model.init(jax.random.key(0), fed.sample())
    n = np.asarray(fed.train.num_examples)
    plan = plan_local_work(n, fed.train.x.shape[1], local_epochs=None, local_steps=steps,
                           batch_size=b)  # fmt: skip
    update = jax.jit(make_client_update(model, "classification", optax.sgd(0.05), plan))
    xs = [jnp.asarray(fed.train.x[i]) for i in range(k)]
    ys = [jnp.asarray(fed.train.y[i]) for i in range(k)]
    keys = jax.random.split(jax.random.key(2), k)

    def one_round():
        deltas = [update(params, xs[i], ys[i], int(n[i]), keys[i]).delta for i in range(k)]
        return jax.tree.map(lambda *d: sum(d) / k, *deltas)

    jax.block_until_ready(one_round())
    return best_time(one_round, repeats)


def central_round(k, fed, model, steps, b, repeats) -> float:
    """Seconds for ``steps`` SGD steps on the concatenated batch of all ``k`` clients."""
    params = model.init(jax.random.key(0), fed.sample())
    x = jnp.asarray(fed.train.x[:k, :b].reshape(k * b, 28, 28, 1))
    y = jnp.asarray(fed.train.y[:k, :b].reshape(k * b))
    opt = optax.sgd(0.05)

    def loss(p):
        logits = model.apply(p, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train(p):
        def step(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[0][0]

    jax.block_until_ready(train(params))
    return best_time(lambda: train(params), repeats)


def measure(k: int, steps: int, b: int, repeats: int, strategies) -> dict:
    fed = make_federation(k, steps * b)
    model = fljax.models.get("cnn", num_classes=2, features=(16, 32), dense=64)
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=None, local_steps=steps,
                                batch_size=b)  # fmt: skip
    examples = k * steps * b
    out = {"clients": k, "local_steps": steps, "batch": b, "devices": jax.device_count()}
    for s in strategies:
        sec, comp = strategy_round(k, fed, model, algo, s, repeats)
        out[f"{s}_examples_per_s"] = round(examples / sec)
        out[f"{s}_compile_s"] = round(comp, 2)
    loop = loop_round(k, fed, model, steps, b, repeats)
    central = central_round(k, fed, model, steps, b, repeats)
    out["loop_examples_per_s"] = round(examples / loop)
    out["central_examples_per_s"] = round(examples / central)
    for s in strategies:
        out[f"{s}_over_loop"] = round(out[f"{s}_examples_per_s"] / out["loop_examples_per_s"], 3)
        out[f"{s}_over_central"] = round(
            out[f"{s}_examples_per_s"] / out["central_examples_per_s"], 3
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--strategies", nargs="+", default=list(CLIENT_MAPS), choices=CLIENT_MAPS)
    args = p.parse_args()
    runs = [measure(k, args.local_steps, args.batch, args.repeats, args.strategies)
            for k in args.clients]  # fmt: skip
    cols = [*args.strategies, "loop", "central"]
    print(f"CNN 16-32-64 on 28x28x1, {args.local_steps} steps x batch {args.batch}, "
          f"{jax.default_backend()}, {jax.device_count()} devices, {os.cpu_count()} cores")
    print("| clients | " + " | ".join(f"{c} ex/s" for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in runs:
        print(f"| {r['clients']} | "
              + " | ".join(f"{r[f'{c}_examples_per_s']:,}" for c in cols) + " |")  # fmt: skip
    print(json.dumps({"runs": runs, "backend": jax.default_backend()}))


if __name__ == "__main__":
    fljax.set_host_device_count()
    main()
