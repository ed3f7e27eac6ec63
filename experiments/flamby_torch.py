"""FLamby's Fed-TCGA-BRCA federated strategies re-run in PyTorch, as FLamby's code runs them.

A check of ``experiments/flamby.py``: where fljax and FLamby's published figures differ, is
it the algorithm or the run? This script follows FLamby's code path at the commit that
produced its TCGA-BRCA results (c0cc1b4, 2022-08-19; ``flamby/benchmarks/fed_benchmark.py``,
``flamby/strategies/*.py``, ``flamby/strategies/utils.py``), written anew here:

- initial weights: ``torch.manual_seed(seed)`` then ``nn.Linear(39, 1)`` (as
  ``flamby_init.npz``); every strategy starts from a copy;
- data order: per client a ``DataLoader(shuffle=True, batch_size=8, num_workers=0)`` whose
  iterator is kept across rounds and restarted when exhausted (``DataLoaderWithMemory``; an
  epoch straddles rounds, the last batch of an epoch is short); the iterators are created
  when the strategy is built, then ``set_seed(seed)`` (``torch.manual_seed``, NumPy's and
  Python's seeds), then ``run()``: every reshuffle draws from PyTorch's global generator, in
  the order the clients train;
- the local loop: 100 SGD steps on FLamby's Cox loss (``fed_tcga_brca/loss.py``: the batch
  sorted by decreasing time, ``-(s - log cumsum exp s) * event``, mean over the batch);
  FedProx adds ``mu / 2 ||w - w_round||^2``; SCAFFOLD subtracts ``correction . w`` from the
  loss, ``correction_i <- correction_i + (x_t - y_i^{t-1}) / (eta_g eta_l K)`` (which is the
  paper's ``c_i - c`` with means weighted by training size), and keeps
  ``y_i = eta_g y_i + (1 - eta_g) x_t``;
- the server: the update mean weighted by training size (float32, NumPy); FedAdam / FedYogi /
  FedAdagrad in FLamby's form (``m``, ``v`` from 0, no bias correction, ``tau`` added to
  ``sqrt(v)``); the benchmark scores ``run()[0]`` (client 0's copy of the global model).

Variations, one at a time: ``--shuffle-offset k`` seeds the data order with ``seed + k``
(same initial weights: the spread over data orders alone); ``--restart-each-round`` starts a
fresh epoch at every round (fljax's schedule); ``--cox-normalize events`` divides the Cox loss
by the number of events instead of the batch size (what fljax's ``tcga_brca`` loader did
before it passed ``cox_normalize`` on to the loss). The scores use fljax's C-index on fljax's
test splits (``experiments/flamby.py``). Prints, per strategy, mean +- std over the seeds of
both figures beside FLamby's published ones (ok: within 2 FLamby std or 0.02), the per-seed
client means, and one JSON line.

    pip install torch   # the bench extra
    python experiments/flamby_torch.py [--data-dir ../shared/data] [--shuffle-offset K]
                                       [--restart-each-round] [--cox-normalize events]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flamby as fl  # noqa: E402  (experiments/flamby.py)

SETUP = fl.SETUPS["tcga"]
STRATEGIES = ("FedAdagrad", "FedAdam", "FedAvg", "FedProx", "FedYogi", "SCAFFOLD")  # sorted


def set_seed(seed: int) -> None:
    """FLamby's ``set_seed``: PyTorch, NumPy and Python generators."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (FLamby seeds the legacy generator)
    random.seed(seed)


def cox_loss(scores, truth, normalize: str = "batch"):
    """FLamby's Fed-TCGA-BRCA loss; ``truth[:, 0]`` events, ``truth[:, 1]`` times. FLamby
    divides by the batch size (``"batch"``); ``"events"`` divides by the number of events."""
    import torch

    order = torch.argsort(-truth[:, 1], stable=True)  # Python's stable sort by -time
    s, events = scores[:, 0][order], truth[:, 0][order]
    s = s - s.max()
    terms = -(s - torch.log(torch.exp(s).cumsum(0))) * events
    if normalize == "batch":
        return terms.mean()
    return terms.sum() / torch.clamp(events.sum(), min=1.0)


class Memory:
    """FLamby's ``DataLoaderWithMemory``: one iterator kept across rounds, restarted when
    exhausted."""

    def __init__(self, loader):
        self.loader, self.it = loader, iter(loader)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


def params_of(model) -> list[np.ndarray]:
    return [p.detach().clone().numpy() for p in model.parameters()]


def set_params(model, values) -> None:
    import torch

    for p, v in zip(model.parameters(), values, strict=True):
        p.data = torch.from_numpy(np.array(v, np.float32))


def local_train(model, opt, memory, steps, normalize, mu=0.0, correction=None):
    """``steps`` SGD updates: Cox loss (+ FedProx's term, - SCAFFOLD's correction . w)."""
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(steps):
        x, y = memory.next()
        loss = cox_loss(model(x), y, normalize)
        params = list(model.parameters())
        if mu > 0:
            loss = loss + mu / 2 * sum(
                ((p - q) ** 2).sum() for p, q in zip(params, start, strict=True)
            )
        if correction is not None:
            loss = loss - sum((p * c).sum() for p, c in zip(params, correction, strict=True))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def run_strategy(name: str, hp: dict, init, loaders, sizes, data_seed: int, options: dict):
    """FLamby's ``Strategy(...).run()[0]`` after ``set_seed(data_seed)``: the final weights.
    ``options``: ``normalize`` (the Cox loss), ``restart`` (a fresh epoch at every round)."""
    import torch

    lr, rounds, steps = hp["client_lr"], SETUP["rounds"], 100
    models = [copy.deepcopy(init) for _ in loaders]
    opts = [torch.optim.SGD(m.parameters(), lr=lr) for m in models]
    memories = [Memory(dl) for dl in loaders]  # built with the strategy, before set_seed
    set_seed(data_seed)
    w = np.asarray(sizes, np.float32)
    x0 = params_of(models[0])
    m = [np.zeros_like(p) for p in x0]
    v = [np.zeros_like(p) for p in x0]
    prev_local = [params_of(mod) for mod in models]  # SCAFFOLD's y_i^{t-1}
    corr = [[torch.zeros_like(torch.from_numpy(p)) for p in x0] for _ in models]
    eta_g = hp.get("server_lr", 1.0)
    for _ in range(rounds):
        updates = []
        for i, (mod, opt, mem) in enumerate(zip(models, opts, memories, strict=True)):
            x_t = params_of(mod)
            if options["restart"]:
                mem.it = iter(mem.loader)
            if name == "SCAFFOLD":
                den, prev = eta_g * lr * steps, prev_local[i]
                corr[i] = [c + torch.from_numpy((p - q) / den)
                           for c, p, q in zip(corr[i], x_t, prev, strict=True)]  # fmt: skip
                local_train(mod, opt, mem, steps, options["normalize"], correction=corr[i])
                y = [eta_g * n + (1 - eta_g) * o for n, o in zip(params_of(mod), x_t, strict=True)]
                prev_local[i] = y
            else:
                local_train(mod, opt, mem, steps, options["normalize"], mu=hp.get("mu", 0.0))
                y = params_of(mod)
            updates.append([a - b for a, b in zip(y, x_t, strict=True)])
            set_params(mod, x_t)
        delta = [sum(u[j] * w[i] for i, u in enumerate(updates)) / float(w.sum())
                 for j in range(len(x0))]  # fmt: skip
        if name in ("FedAdam", "FedYogi", "FedAdagrad"):
            b1, b2, tau = hp["beta1"], hp["beta2"], hp["tau"]
            m = [b1 * a + (1 - b1) * d for a, d in zip(m, delta, strict=True)]
            if name == "FedAdam":
                v = [b2 * a + (1 - b2) * d * d for a, d in zip(v, delta, strict=True)]
            elif name == "FedYogi":
                v = [
                    a - (1 - b2) * d * d * np.sign(a - d * d) for a, d in zip(v, delta, strict=True)
                ]
            else:
                v = [a + d * d for a, d in zip(v, delta, strict=True)]
            delta = [hp["server_lr"] * a / (np.sqrt(b) + tau) for a, b in zip(m, v, strict=True)]
        for mod in models:
            set_params(mod, [p + d for p, d in zip(params_of(mod), delta, strict=True)])
    return params_of(models[0])


def train_local(init, loader, seed: int):
    """FLamby's ``train_single_centric`` (Local i): ``set_seed(seed)``, then 30 epochs of Adam
    (lr 0.1) over a fresh iterator of the client's loader each epoch."""
    import torch

    model = copy.deepcopy(init)
    set_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=SETUP["pooled"]["client_lr"])
    for _ in range(SETUP["pooled"]["local_epochs"]):
        for x, y in loader:
            cox_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    return params_of(model)


def loaders_for(fed):
    """One shuffling ``DataLoader`` (batch 8) per client over its training rows, FLamby's
    order and ``y = (event, time)``."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    out, sizes = [], []
    for i in range(fed.num_clients):
        n = int(fed.train.num_examples[i])
        x = torch.tensor(np.asarray(fed.train.x[i, :n]), dtype=torch.float32)
        y = np.asarray(fed.train.y[i, :n])[:, ::-1].copy()  # fljax (time, event)
        ds = TensorDataset(x, torch.tensor(y, dtype=torch.float32))
        out.append(DataLoader(ds, batch_size=SETUP["batch"], shuffle=True, num_workers=0))
        sizes.append(n)
    return out, sizes


def main(argv=None) -> int:
    import warnings

    import jax
    import torch

    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=fl.ROOT.parent / "shared" / "data")
    p.add_argument("--seeds", nargs="+", type=int, default=list(fl.SEEDS))
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--shuffle-offset", type=int, default=0,
                   help="data order from seed + k (same initial weights)")  # fmt: skip
    p.add_argument("--cox-normalize", default="batch", choices=("batch", "events"),
                   help="FLamby's per-batch mean, or per event")  # fmt: skip
    p.add_argument("--restart-each-round", action="store_true",
                   help="a fresh epoch at every round (fljax's schedule) instead of FLamby's "
                        "iterator kept across rounds")  # fmt: skip
    p.add_argument("--locals", action="store_true",
                   help="also FLamby's Local i baselines (Adam 0.1, 30 epochs)")  # fmt: skip
    args = p.parse_args(argv)
    if not set(args.seeds) <= set(fl.SEEDS):
        p.error(f"--seeds: FLamby published seeds {list(fl.SEEDS)}, got {args.seeds}")
    torch.set_num_threads(1)
    options = dict(normalize=args.cox_normalize, restart=args.restart_each_round)
    fed, _, pooled_test = fl.load_data(SETUP, args.data_dir)
    model, init_params = fl.model_and_init("tcga", fed, "flamby")
    scorer = jax.jit(fl.evaluate_fn(model, fed.task, metrics=("c_index",),
                                    loss_options=fed.loss_options))  # fmt: skip
    ref = fl.flamby_reference("tcga", args.data_dir)
    loaders, sizes = loaders_for(fed)

    def score(weight, bias) -> dict:
        """Both figures; NaN when training diverged (non-finite weights)."""
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            return dict(clients=[float("nan")] * fed.num_clients, pooled=float("nan"))
        params = {"Dense_0": {"kernel": weight.T, "bias": bias}}
        clients = np.asarray(scorer(params, *fed.test)["c_index"], np.float64).tolist()
        return dict(clients=clients, pooled=float(np.asarray(scorer(params, *pooled_test)
                                                             ["c_index"])[0]))  # fmt: skip

    runs: dict = {}
    for seed in args.seeds:
        set_seed(seed)
        init = torch.nn.Linear(39, 1)  # FLamby's global_init
        stored = init_params(seed)["Dense_0"]
        if not np.array_equal(init.weight.detach().numpy().T, np.asarray(stored["kernel"])):
            raise RuntimeError(f"torch {torch.__version__} draws other weights than "
                               "flamby_init.npz")  # fmt: skip
        for name in args.strategies:
            hp = SETUP["strategies"][name][1]
            data_seed = seed + args.shuffle_offset
            weight, bias = run_strategy(name, hp, init, loaders, sizes, data_seed, options)
            runs.setdefault(name, []).append(dict(seed=seed, **score(weight, bias)))
        if args.locals:
            for i, loader in enumerate(loaders):
                weight, bias = train_local(init, loader, seed)
                runs.setdefault(f"Local {i}", []).append(dict(seed=seed, **score(weight, bias)))
        print(f"  seed {seed} done", flush=True)
    schedule = "a fresh epoch each round" if args.restart_each_round else "FLamby's iterators"
    print(f"\nFLamby's TCGA-BRCA code path in torch {torch.__version__}: seeds {args.seeds}, "
          f"data order seed + {args.shuffle_offset}, Cox loss per {args.cox_normalize}, "
          f"{schedule}")  # fmt: skip
    print(f"{'strategy':11s} {'client mean':>17s} {'FLamby':>17s} ok  {'pooled':>17s} "
          f"{'FLamby':>17s} ok  same   client mean per seed")  # fmt: skip
    table = {}
    for name, rs in runs.items():
        flamby_runs = ref[fl.FLAMBY_METHOD.get(name, name)]
        ours, theirs = fl.summary(rs), fl.summary(flamby_runs)
        cells = []
        for key in ("client_mean", "pooled"):
            ok = "yes" if fl.within(ours[key], theirs[key]) else "NO"
            cells.append(f"{ours[key][0]:.4f} +- {ours[key][1]:.4f} "
                         f"{theirs[key][0]:.4f} +- {theirs[key][1]:.4f} {ok:3s}")  # fmt: skip
        per_seed = [round(float(np.nanmean(r["clients"])), 4) for r in rs]
        same = fl.identical(rs, flamby_runs)
        print(f"{name:11s} {cells[0]} {cells[1]} {same[0]:2d}/{same[1]}  {per_seed}")
        table[name] = dict(torch=ours, flamby=theirs, per_seed=per_seed, identical=same)
    print(json.dumps(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
