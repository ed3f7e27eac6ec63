"""fljax vs peers on one FedAvg workload: Flower's simulation engine (Ray backend), a plain
PyTorch per-client loop, and fljax's compiled round.

The same work everywhere (default: 100 clients per round, all of them, 10 local SGD steps of
batch 32 at lr 0.05, MLP 30-64-64-2 with PyTorch's default initialisation, FedAvg weighted by
examples): the clients' data are the same arrays, and each framework's seconds per round are
measured after its start-up (Flower: the median gap between successive aggregations, so Ray's
start is excluded; PyTorch and fljax: best of ``--repeats`` rounds after a warm-up). Prints the
table and ends with one JSON line (``fljax_over_flower``, ``fljax_over_torch``: speed ratios).

Needs the ``bench`` extra (``pip install -e '.[bench]'``: flwr[simulation], torch); a peer
that is not installed is reported as missing, not faked.

    python benchmarks/peers.py [--clients 100 --local-steps 10 --batch 32 --rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fljax
from fljax.data import ClientData
from fljax.simulate import build_block, build_round, init_state

LR = 0.05


def make_data(clients: int, per_client: int, features: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(features,))
    xs = [rng.normal(size=(per_client, features)).astype(np.float32) for _ in range(clients)]
    ys = [(x @ w > 0).astype(np.int64) for x in xs]
    return xs, ys


def fljax_round_seconds(xs, ys, steps, batch, repeats):
    fed = fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=2, name="peers")
    k = len(xs)
    model = fljax.models.get("mlp", num_classes=2, hidden=(64, 64), init="torch")
    algo = fljax.algorithms.get(
        "fedavg", client_lr=LR, local_epochs=None, local_steps=steps, batch_size=batch
    )
    params = model.init(jax.random.key(0), fed.sample())
    state = init_state(algo, params, k)
    train = ClientData(*(jnp.asarray(a) for a in fed.train))
    block = jax.jit(build_block(build_round(algo, model, fed, k)))
    ids = jnp.arange(1, dtype=jnp.int32)
    compiled = block.lower(state, jax.random.key(1), ids, train).compile()
    jax.block_until_ready(compiled(state, jax.random.key(1), ids, train))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, jax.random.key(1), ids, train))
        times.append(time.perf_counter() - t0)
    return min(times)


def _torch_model():
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 2),
    )  # fmt: skip


def _torch_train(model, x, y, steps, batch, seed):
    """``steps`` SGD steps on shuffled minibatches of one client's data (in place)."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    order = torch.randperm(n, generator=g).to(x.device)
    for t in range(steps):
        idx = order[(t * batch) % n : (t * batch) % n + batch]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()


def torch_device():
    """PyTorch's device for the peer rows: the GPU when there is one (so a GPU benchmark
    compares like with like), else the CPU with one thread per core."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.device("cpu")


def torch_sync(device) -> None:
    """Waits for the device's queued work (CUDA is asynchronous) before a clock is read."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def torch_round_seconds(xs, ys, steps, batch, repeats, make_model=None):
    """Seconds per FedAvg round of a PyTorch per-client loop over all ``xs`` (best of
    ``repeats``) on :func:`torch_device`; ``make_model`` builds the torch model (default: the
    MLP)."""
    import torch

    make_model = make_model or _torch_model
    dev = torch_device()
    xt = [torch.from_numpy(x).to(dev) for x in xs]
    yt = [torch.from_numpy(y).to(dev) for y in ys]
    global_model = make_model().to(dev)
    local = make_model().to(dev)

    def one_round():
        g_state = {k: v.clone() for k, v in global_model.state_dict().items()}
        acc = {k: torch.zeros_like(v) for k, v in g_state.items()}
        total = 0
        for c in range(len(xs)):
            local.load_state_dict(g_state)
            _torch_train(local, xt[c], yt[c], steps, batch, c)
            n = xt[c].shape[0]
            for k, v in local.state_dict().items():
                acc[k] += n * v
            total += n
        global_model.load_state_dict({k: v / total for k, v in acc.items()})
        torch_sync(dev)

    one_round()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one_round()
        times.append(time.perf_counter() - t0)
    return min(times)


def flower_round_seconds(xs, ys, steps, batch, rounds, make_model=None):
    """Flower's simulation engine: a NumPyClient per site training the PyTorch model
    (``make_model``, default the MLP), FedAvg over all clients every round; the median time
    between successive aggregations."""
    import torch

    make_model = make_model or _torch_model
    from flwr.client import ClientApp, NumPyClient
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    stamps: list[float] = []

    class Site(NumPyClient):
        def __init__(self, cid):
            self.cid = cid
            self.model = make_model()

        def fit(self, parameters, config):
            keys = list(self.model.state_dict())
            self.model.load_state_dict(
                {k: torch.from_numpy(np.asarray(p)) for k, p in zip(keys, parameters, strict=True)}
            )
            x, y = torch.from_numpy(xs[self.cid]), torch.from_numpy(ys[self.cid])
            _torch_train(self.model, x, y, steps, batch, self.cid)
            out = [v.detach().numpy() for v in self.model.state_dict().values()]
            return out, int(x.shape[0]), {}

    class TimedFedAvg(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            stamps.append(time.perf_counter())
            return out

    def client_fn(context):
        return Site(int(context.node_config["partition-id"])).to_client()

    k = len(xs)

    def server_fn(context):
        strategy = TimedFedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=k,
            min_available_clients=k, min_evaluate_clients=0,
        )  # fmt: skip
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=k,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if len(stamps) < 2:
        raise RuntimeError(f"Flower finished {len(stamps)} rounds; cannot time a round")
    return statistics.median(np.diff(stamps))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="Flower rounds (>= 3)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], choices=["flower", "torch"])
    args = ap.parse_args(argv)
    xs, ys = make_data(args.clients, args.local_steps * args.batch)
    seconds = {"fljax": fljax_round_seconds(xs, ys, args.local_steps, args.batch, args.repeats)}
    missing = {}
    runners = {"torch": lambda: torch_round_seconds(xs, ys, args.local_steps, args.batch,
                                                    args.repeats),
               "flower": lambda: flower_round_seconds(xs, ys, args.local_steps, args.batch,
                                                      args.rounds)}  # fmt: skip
    for name, fn in runners.items():
        if name in args.skip:
            continue
        try:
            seconds[name] = fn()
        except ImportError as e:  # the bench extra is not installed
            missing[name] = f"not installed ({e.name}); pip install -e '.[bench]'"
    print(f"{args.clients} clients per round x {args.local_steps} local steps x batch "
          f"{args.batch}, MLP 30-64-64-2, {os.cpu_count()} CPU cores")  # fmt: skip
    print("| framework | seconds / round | fljax speed-up |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.4f} | {s / seconds['fljax']:.1f}x |")
    for name, why in missing.items():
        print(f"| {name} | {why} | |")
    out = {
        "clients": args.clients, "local_steps": args.local_steps, "batch": args.batch,
        "backend": jax.default_backend(),
        **{f"{k}_s_per_round": v for k, v in seconds.items()},
        **{f"fljax_over_{k}": v / seconds["fljax"] for k, v in seconds.items() if k != "fljax"},
        "missing": missing,
    }  # fmt: skip
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
