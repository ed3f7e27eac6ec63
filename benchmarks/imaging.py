"""Imaging rounds: fljax's CNN and ResNet-8 rounds per client-mapping strategy vs per-client
loops (JAX, PyTorch) and centralized training of the same examples.

Workloads (FedAvg, K clients x ``--local-steps`` SGD steps x ``--batch``, lr 0.05):
  cnn       ``fljax.models.get("cnn", features=(16, 32), dense=64)`` on 28x28x1 images;
  resnet8   ``fljax.models.get("resnet8")`` (group norm, widths 16-32-64) on 32x32x3 images.
Measured in one process, each as examples per second (best of ``--repeats`` after a warm-up):
  <strategy>     fljax's compiled round with ``client_map=<strategy>`` (vmap, device_vmap,
                 sequential), convolutions ``conv="dot"`` (the default), clients split over
                 the host devices;
  auto           the strategy ``client_map="auto"`` picks, at that strategy's measured
                 speed (``auto_timed``: auto's own one-round timing; ``auto_compile_s``
                 includes every candidate's compilation);
  vmap_xla       vmap with ``conv="xla"`` (``lax.conv``: grouped convolutions under vmap);
                 only up to ``--xla-max-clients`` clients (it is very slow);
  loop_<conv>    one jitted SGD step called per client and per step from Python, then the
                 weighted average (JAX's own per-client loop), with each convolution;
  central_<conv> one model, the same number of steps on the K clients' batches concatenated;
  torch_loop, torch_central, flower   the same in PyTorch (on the GPU when there is one, else
                 CPU threads = cores) and Flower's simulation engine (PyTorch clients on the
                 CPU), when the ``bench`` extra is installed (else "missing").
``loop`` and ``central`` are the faster of their two convolutions. ``--also-devices 1``
reruns the fljax strategies in a child process with that many host devices
(``<s>_over_<s>_<n>dev``). The last line is one JSON object with ``<this>_over_<that>`` ratios.

    python benchmarks/imaging.py [--workloads cnn resnet8 --clients 8 32 100 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fljax
from fljax._devices import client_mesh, replicated
from fljax.data import ClientData
from fljax.engine import CLIENT_MAPS, build_block, build_round, init_state
from fljax.engine._auto import candidates, fastest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import best_time  # noqa: E402  (the same best-of-n timer)

LR = 0.05
WORKLOADS = {
    "cnn": ((28, 28, 1), lambda conv: fljax.models.get(
        "cnn", num_classes=2, features=(16, 32), dense=64, conv=conv)),
    "resnet8": ((32, 32, 3), lambda conv: fljax.models.get("resnet8", num_classes=2, conv=conv)),
}  # fmt: skip


def make_federation(clients: int, per_client: int, shape=(28, 28, 1), seed: int = 0):
    """``clients`` sites of ``per_client`` images, labels from a fixed random linear filter."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(int(np.prod(shape)),))
    xs = [rng.normal(size=(per_client, *shape)).astype(np.float32) for _ in range(clients)]
    ys = [(x.reshape(len(x), -1) @ w > 0).astype(np.int32) for x in xs]
    return fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=2, name="images")


def _fljax_setup(k, fed, model, steps, b):
    params = model.init(jax.random.key(0), fed.sample())
    algo = fljax.algorithms.get("fedavg", client_lr=LR, local_epochs=None, local_steps=steps,
                                batch_size=b)  # fmt: skip
    mesh = client_mesh(k)
    train = ClientData(*(jnp.asarray(a) for a in fed.train))
    state = init_state(algo, params, k)
    if mesh is not None:
        state, train = jax.device_put((state, train), replicated(mesh))

    def block_for(strategy):
        return jax.jit(build_block(build_round(algo, model, fed, k, mesh, client_map=strategy)))

    inputs = (state, jax.random.key(1), jnp.arange(1, dtype=jnp.int32), train)
    return block_for, inputs, mesh


def strategy_round(k, fed, model, steps, b, strategy, repeats) -> tuple[float, float]:
    """Seconds per round and compile seconds of fljax's round with ``client_map=strategy``."""
    block_for, inputs, _ = _fljax_setup(k, fed, model, steps, b)
    t0 = time.perf_counter()
    compiled = block_for(strategy).lower(*inputs).compile()
    compile_s = time.perf_counter() - t0
    return best_time(lambda: compiled(*inputs), repeats), compile_s


def auto_round(k, fed, model, steps, b) -> tuple[str, float, float]:
    """``client_map="auto"``'s choice, its measured seconds per round, and the seconds it
    spent compiling every candidate."""
    block_for, inputs, mesh = _fljax_setup(k, fed, model, steps, b)
    best, seconds, compile_s, _ = fastest(block_for, inputs, candidates(False, mesh, None))
    return best, seconds[best], compile_s


def _sgd_step(model):
    def loss(p, x, y, key):
        logits = model.apply(p, x, train=True, key=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, x, y, key):
        return jax.tree.map(lambda w, g: w - LR * g, p, jax.grad(loss)(p, x, y, key))

    return step


def loop_round(k, fed, model, steps, b, repeats) -> float:
    """Seconds per round of one jitted SGD step called per client and per step from Python,
    then the example-weighted average of the clients' models."""
    params = model.init(jax.random.key(0), fed.sample())
    step = _sgd_step(model)
    n = np.asarray(fed.train.num_examples, np.float32)
    batches = [[(jnp.asarray(fed.train.x[i, s * b:(s + 1) * b]),
                 jnp.asarray(fed.train.y[i, s * b:(s + 1) * b])) for s in range(steps)]
               for i in range(k)]  # fmt: skip
    key = jax.random.key(2)
    weighted_add = jax.jit(lambda acc, p, w: jax.tree.map(lambda a, q: a + w * q, acc, p))

    def one_round():
        acc = jax.tree.map(jnp.zeros_like, params)
        for i in range(k):
            p = params
            for x, y in batches[i]:
                p = step(p, x, y, key)
            acc = weighted_add(acc, p, n[i] / n[:k].sum())
        return acc

    jax.block_until_ready(one_round())
    return best_time(one_round, repeats)


def central_round(k, fed, model, steps, b, repeats) -> float:
    """Seconds for ``steps`` SGD steps of one model on the ``k`` clients' batches concatenated
    (``k * b`` examples per step: the same examples as a round)."""
    params = model.init(jax.random.key(0), fed.sample())
    step = _sgd_step(model)
    xs = [jnp.asarray(fed.train.x[:k, s * b:(s + 1) * b].reshape(k * b, *fed.train.x.shape[2:]))
          for s in range(steps)]  # fmt: skip
    ys = [jnp.asarray(fed.train.y[:k, s * b:(s + 1) * b].reshape(k * b)) for s in range(steps)]
    key = jax.random.key(2)

    def train():
        p = params
        for x, y in zip(xs, ys, strict=True):
            p = step(p, x, y, key)
        return p

    jax.block_until_ready(train())
    return best_time(train, repeats)


def torch_model(workload: str):
    """The workload's model in PyTorch (the same layers; group norm for ResNet-8)."""
    import torch
    from torch import nn

    if workload == "cnn":
        return lambda: nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 2),
        )  # fmt: skip

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.n1 = nn.GroupNorm(8, cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.n2 = nn.GroupNorm(8, cout)
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.GroupNorm(8, cout))
                          if stride != 1 or cin != cout else nn.Identity())  # fmt: skip

        def forward(self, x):
            y = self.n2(self.c2(torch.relu(self.n1(self.c1(x)))))
            return torch.relu(y + self.short(x))

    return lambda: nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.GroupNorm(8, 16), nn.ReLU(),
        Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2),
    )  # fmt: skip


def torch_central_round(make_model, x, y, steps, b, k, repeats) -> float:
    """PyTorch: ``steps`` SGD steps of one model on the ``k`` clients' batches concatenated."""
    import torch
    from peers import torch_device, torch_sync

    dev = torch_device()
    model, loss_fn = make_model().to(dev), torch.nn.functional.cross_entropy
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    batches = [(torch.from_numpy(np.ascontiguousarray(x[:k, s * b:(s + 1) * b]).reshape(
        k * b, *x.shape[2:])).to(dev), torch.from_numpy(y[:k, s * b:(s + 1) * b].reshape(
            k * b)).to(dev)) for s in range(steps)]  # fmt: skip

    def train():
        for xb, yb in batches:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        torch_sync(dev)

    train()
    return best_time(train, repeats)  # train() waits for the device itself


def peers(workload, fed, k, steps, b, repeats, skip) -> tuple[dict, dict]:
    """Seconds of the PyTorch loop, PyTorch central and Flower; what is missing and why."""
    from peers import flower_round_seconds, torch_round_seconds

    x = np.transpose(np.asarray(fed.train.x[:k]), (0, 1, 4, 2, 3)).astype(np.float32)
    y = np.asarray(fed.train.y[:k]).astype(np.int64)
    seconds, missing = {}, {}
    runners = {
        "torch_loop": lambda m: torch_round_seconds(list(x), list(y), steps, b, repeats, m),
        "torch_central": lambda m: torch_central_round(m, x, y, steps, b, k, repeats),
        "flower": lambda m: flower_round_seconds(list(x), list(y), steps, b, 5, m),
    }
    for name, fn in runners.items():
        if name in skip:
            continue
        try:
            seconds[name] = fn(torch_model(workload))
        except ImportError as e:  # the bench extra is not installed
            missing[name] = f"not installed ({e.name}); pip install -e '.[bench]'"
    return seconds, missing


def measure(workload: str, k: int, args) -> dict:
    shape, make_model = WORKLOADS[workload]
    steps, b, repeats = args.local_steps, args.batch, args.repeats
    fed = make_federation(k, steps * b, shape)
    model = make_model("dot")
    examples = k * steps * b
    out = {"workload": workload, "clients": k, "local_steps": steps, "batch": b,
           "devices": jax.device_count()}  # fmt: skip
    seconds = {}
    for s in args.strategies:
        seconds[s], out[f"{s}_compile_s"] = strategy_round(k, fed, model, steps, b, s, repeats)
    if not args.fljax_only:
        out["auto_choice"], auto_s, out["auto_compile_s"] = auto_round(k, fed, model, steps, b)
        out["auto_timed_examples_per_s"] = round(examples / auto_s)  # auto's own timing
        # auto runs the strategy it chose: its speed is that strategy's, measured as above
        seconds["auto"] = seconds.get(out["auto_choice"], auto_s)
        if k <= args.xla_max_clients:
            seconds["vmap_xla"], out["vmap_xla_compile_s"] = strategy_round(
                k, fed, make_model("xla"), steps, b, "vmap", repeats
            )
        for conv in ("dot", "xla"):
            seconds[f"loop_{conv}"] = loop_round(k, fed, make_model(conv), steps, b, repeats)
            seconds[f"central_{conv}"] = central_round(k, fed, make_model(conv), steps, b,
                                                       repeats)  # fmt: skip
        seconds["loop"] = min(seconds["loop_dot"], seconds["loop_xla"])
        seconds["central"] = min(seconds["central_dot"], seconds["central_xla"])
        peer_s, out["missing"] = peers(workload, fed, k, steps, b, repeats, args.skip)
        seconds.update(peer_s)
    for name, sec in seconds.items():
        out[f"{name}_examples_per_s"] = round(examples / sec)
    print(json.dumps(out), file=sys.stderr, flush=True)  # each row as soon as it is measured
    for this in [*args.strategies, "auto"]:
        for that in ("loop", "central", "torch_loop", "torch_central", "flower"):
            if this in seconds and that in seconds:
                out[f"{this}_over_{that}"] = round(seconds[that] / seconds[this], 3)
    return out


def other_devices(n: int, argv: list[str]) -> list[dict]:
    """The fljax strategies measured by a child process with ``n`` host devices."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    cmd = [sys.executable, __file__, *argv, "--fljax-only"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["runs"]


def _compare(runs: list[dict], others: list[dict], n: int, strategies) -> None:
    for r, o in zip(runs, others, strict=True):
        for s in strategies:
            r[f"{s}_{n}dev_examples_per_s"] = o[f"{s}_examples_per_s"]
            r[f"{s}_over_{s}_{n}dev"] = round(r[f"{s}_examples_per_s"]
                                              / o[f"{s}_examples_per_s"], 3)  # fmt: skip


def _table(runs: list[dict]) -> None:
    cols = [c.removesuffix("_examples_per_s") for c in runs[0] if c.endswith("_examples_per_s")]
    print("| workload | clients | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for r in runs:
        cells = [f"{r.get(f'{c}_examples_per_s', 0):,}" for c in cols]
        print(f"| {r['workload']} | {r['clients']} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--clients", type=int, nargs="+", default=[8, 32, 100])
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--strategies", nargs="+", default=list(CLIENT_MAPS), choices=CLIENT_MAPS)
    p.add_argument("--xla-max-clients", type=int, default=8)
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["torch_loop", "torch_central", "flower"])  # fmt: skip
    p.add_argument("--also-devices", type=int, nargs="*", default=[],
                   help="host device counts to rerun the fljax strategies with (CPU)")
    p.add_argument("--fljax-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    runs = [measure(w, k, args) for w in args.workloads for k in args.clients]
    if not args.fljax_only:
        child_argv = ["--workloads", *args.workloads, "--clients", *map(str, args.clients),
                      "--local-steps", str(args.local_steps), "--batch", str(args.batch),
                      "--repeats", str(args.repeats), "--strategies", *args.strategies]  # fmt: skip
        for n in args.also_devices:
            _compare(runs, other_devices(n, child_argv), n, args.strategies)
        print(f"{args.local_steps} local steps x batch {args.batch}, {jax.default_backend()}, "
              f"{jax.device_count()} devices, {os.cpu_count()} cores")  # fmt: skip
        _table(runs)
    print(json.dumps({"runs": runs, "backend": jax.default_backend()}))


if __name__ == "__main__":
    fljax.set_host_device_count()
    main()
