"""Reproduce FLamby's benchmark tables for Fed-Heart-Disease and Fed-TCGA-BRCA.

FLamby's protocol (du Terrail et al., NeurIPS 2022 Datasets & Benchmarks), from its public
repository: models in ``flamby/datasets/fed_*/model.py`` (logistic regression; linear Cox),
batch size, pooled optimizer and epochs in ``flamby/datasets/fed_*/common.py`` (heart: batch 4,
Adam 1e-3, 50 epochs; TCGA: batch 8, Adam 0.1, 30 epochs), rounds from its
``get_nb_max_rounds(100)`` (15 and 5), 100 local SGD updates per round, the federated
strategies' client/server learning rates, mu, beta1/beta2/tau as recorded in its published
results files (``flamby/results/``, the columns of each row; the same values are in its
``flamby/config_*.json`` of that time), weights proportional to client training size, seeds
42-46. Pooled training and Local i train one model with the pooled optimizer; every model is
scored on each client's test set and on the pooled test set ("Pooled Test"). Heart disease is
z-scored per site, except the pooled model and the pooled test set (pooled statistics), as in
FLamby's dataset class. TCGA-BRCA's Cox loss is FLamby's ``BaselineLoss``: divided by the batch
size, not by the number of events (``cox_normalize="batch"``).

Initial weights (``--init``): ``flamby`` (the default) starts every method of seed s from
FLamby's own model for that seed, ``torch.manual_seed(s)`` then ``nn.Linear`` (stored in
``experiments/flamby_init.npz`` by ``experiments/flamby_init.py``); heart disease then uses
FLamby's one-logit sigmoid model (``logistic(..., one_logit=True)``). ``fljax`` draws the same
PyTorch-default distribution from the seed in JAX (heart disease with two logits).

SCAFFOLD: FLamby's code at the commit of its results (c0cc1b4) accumulates a per-client
correction ``(x_t - y_i^{t-1}) / (eta_g eta_l K)`` and subtracts it from the gradient; with
every client in every round this is the paper's ``c_i - c`` with means weighted by training
size, i.e. fljax's ``scaffold`` with ``weighting="num_examples"``.
``experiments/flamby_torch.py`` re-runs FLamby's TCGA-BRCA code path in PyTorch as a check.

Two cyclic variants: ``Cyclic`` passes the model from site to site (one site per round, a fresh
random order every cycle); ``flamby_cyclic`` mimics FLamby's code since May 2022, which keeps a
model per client, never passes weights, and evaluates client 0's model: client 0 trained alone
for 100 updates at each of its turns in the shuffled schedule.

Prints, per dataset, fljax mean +- std over the 5 seeds beside FLamby's for both figures (mean
over clients of each client's own test metric, and the pooled test metric), writes a figure in
FLamby's style (per-client bars per strategy), and ends with one JSON line.

    python experiments/flamby.py [--data-dir ../shared/data] [--out outputs/flamby]
                                 [--init flamby|fljax]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fljax
from fljax.client import evaluate_fn
from fljax.data import ClientData

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (42, 43, 44, 45, 46)
INITS = ("flamby", "fljax")
INIT_FILE = Path(__file__).resolve().parent / "flamby_init.npz"  # experiments/flamby_init.py
FEDOPT = dict(beta1=0.9, beta2=0.999, tau=1e-8, initial_accumulator=0.0)  # FLamby's FedOpt

SETUPS = {
    "heart": dict(
        dataset="heart_disease",
        folder="heart_disease",
        batch=4,
        rounds=15,
        pooled=dict(client_optimizer="adam", client_lr=1e-3, local_epochs=50),
        metric="accuracy",
        flamby="heart",
        strategies={
            "FedAvg": ("fedavg", dict(client_lr=1e-3)),
            "FedProx": ("fedprox", dict(client_lr=1e-3, mu=0.01)),
            "SCAFFOLD": ("scaffold", dict(client_lr=1e-3, server_lr=1.0, weighting="num_examples")),
            "FedAdam": ("fedadam", dict(client_lr=0.01, server_lr=0.01, **FEDOPT)),
            "FedYogi": ("fedyogi", dict(client_lr=0.003162, server_lr=0.01, **FEDOPT)),
            "FedAdagrad": ("fedadagrad", dict(client_lr=0.003162, server_lr=0.316228, **FEDOPT)),
        },
        cyclic_lr=0.01,
    ),
    "tcga": dict(
        dataset="tcga_brca",
        folder="tcga_brca",
        batch=8,
        rounds=5,
        pooled=dict(client_optimizer="adam", client_lr=0.1, local_epochs=30),
        metric="c_index",
        flamby="tcga",
        strategies={
            "FedAvg": ("fedavg", dict(client_lr=0.1)),
            "FedProx": ("fedprox", dict(client_lr=0.1, mu=0.1)),
            "SCAFFOLD": ("scaffold", dict(client_lr=0.01, server_lr=1.0, weighting="num_examples")),
            "FedAdam": ("fedadam", dict(client_lr=0.01, server_lr=0.1, **FEDOPT)),
            "FedYogi": ("fedyogi", dict(client_lr=0.01, server_lr=0.1, **FEDOPT)),
            "FedAdagrad": ("fedadagrad", dict(client_lr=0.01, server_lr=1.0, **FEDOPT)),
        },
        cyclic_lr=0.01,
    ),
}
FLAMBY_METHOD = {
    "Pooled": "Pooled Training",
    "FedAvg": "FedAvg100",
    "FedProx": "FedProx100",
    "SCAFFOLD": "Scaffold100",
    "FedAdam": "FedAdam100",
    "FedYogi": "FedYogi100",
    "FedAdagrad": "FedAdagrad100",
    "Cyclic": "Cyclic100",
    "flamby_cyclic": "Cyclic100",
}


def load_data(setup: dict, data_dir: Path):
    """(federation for training and per-client tests, pooled test split)."""
    folder = data_dir / setup["folder"]
    if setup["dataset"] == "heart_disease":
        fed = fljax.data.load(
            "heart_disease", data_dir=folder, standardize="client", metrics=("accuracy",)
        )
        fed_pooled = fljax.data.load(
            "heart_disease", data_dir=folder, standardize="global", metrics=("accuracy",)
        )
    else:
        fed = fljax.data.load("tcga_brca", data_dir=folder, cox_normalize="batch")
        fed_pooled = fed
    t = fed_pooled.test
    mask = np.arange(t.x.shape[1])[None, :] < t.num_examples[:, None]
    pooled_test = ClientData(t.x[mask][None], t.y[mask][None], np.array([mask.sum()], np.int32))
    return fed, fed_pooled, pooled_test


def only_client(fed, i: int):
    """The federation with every training split emptied but client i's (Local i)."""
    n = np.where(np.arange(fed.num_clients) == i, fed.train.num_examples, 0).astype(np.int32)
    return dataclasses.replace(fed, train=fed.train._replace(num_examples=n))


def flamby_cyclic_turns(num_clients: int, rounds: int, seed: int) -> int:
    """Rounds in which FLamby's Cyclic trains client 0 (its shuffled schedule, rng(seed))."""
    rng = np.random.default_rng(seed)
    order, idx, turns = rng.permutation(num_clients), -1, 0
    for _ in range(rounds):
        idx += 1
        if idx == num_clients:
            order, idx = rng.permutation(num_clients), 0
        turns += int(order[idx] == 0)
    return turns


def model_and_init(name: str, fed, init: str):
    """FLamby's model and, per seed, the initial parameters every method of that seed starts
    from: FLamby's own (``init="flamby"``: ``torch.manual_seed(seed)`` then ``nn.Linear``, from
    ``flamby_init.npz``; heart disease as FLamby's one-logit sigmoid model) or fljax's draw of
    the same distribution from the seed (``init="fljax"``; heart disease with two logits)."""
    if init == "fljax":
        model = fljax.models.get("logistic", num_classes=fed.num_classes, init="torch")
        return model, lambda seed: model.init(jax.random.split(jax.random.key(seed))[0],
                                              fed.sample())  # fmt: skip
    if init != "flamby":
        raise ValueError(f"init={init!r} is not one of {INITS}")
    one_logit = fed.task == "classification"
    model = fljax.models.get(
        "logistic", num_classes=fed.num_classes, init="torch", one_logit=one_logit
    )
    stored = np.load(INIT_FILE)

    def params(seed: int):
        w, b = stored[f"{name}_{seed}_weight"], stored[f"{name}_{seed}_bias"]
        return {"Dense_0": {"kernel": jnp.asarray(w.T), "bias": jnp.asarray(b)}}

    return model, params


def run_dataset(name: str, setup: dict, data_dir: Path, seeds=SEEDS, init: str = "flamby") -> dict:
    fed, fed_pooled, pooled_test = load_data(setup, data_dir)
    model, init_params = model_and_init(name, fed, init)
    metric = setup["metric"]
    scorer = jax.jit(evaluate_fn(model, fed.task, metrics=(metric,), loss_options=fed.loss_options))
    c, b, rounds = fed.num_clients, setup["batch"], setup["rounds"]
    steps = dict(local_epochs=None, local_steps=100, batch_size=b)

    def score(params):
        per_client = np.asarray(scorer(params, *fed.test)[metric], np.float64)
        pooled = float(np.asarray(scorer(params, *pooled_test)[metric])[0])
        return per_client, pooled

    def train(algo, data, k, r, seed):
        return fljax.simulate(
            algo, model, data, rounds=r, clients_per_round=k, seed=seed, eval_every=r,
            params=init_params(seed),
        ).params  # fmt: skip

    out: dict = {}

    def record(strategy, seed, params):
        per_client, pooled = score(params)
        out.setdefault(strategy, []).append(
            dict(seed=seed, clients=per_client.tolist(), pooled=pooled)
        )

    pooled_algo = fljax.algorithms.get("centralized", batch_size=b, **setup["pooled"])
    for seed in seeds:
        record("Pooled", seed, train(pooled_algo, fed_pooled, 1, 1, seed))
        for i in range(c):
            record(f"Local {i}", seed, train(pooled_algo, only_client(fed, i), 1, 1, seed))
        for label, (algo_name, kw) in setup["strategies"].items():
            algo = fljax.algorithms.get(algo_name, **steps, **kw)
            record(label, seed, train(algo, fed, c, rounds, seed))
        cyc = fljax.algorithms.get("cyclic", client_lr=setup["cyclic_lr"], shuffle=True, **steps)
        record("Cyclic", seed, train(cyc, fed, 1, rounds, seed))
        turns = flamby_cyclic_turns(c, rounds, seed)
        local0 = fljax.algorithms.get("centralized", client_lr=setup["cyclic_lr"], **steps)
        if turns:
            params = train(local0, only_client(fed, 0), 1, turns, seed)
        else:  # FLamby returns client 0's untrained model
            params = init_params(seed)
        record("flamby_cyclic", seed, params)
        print(f"  {name} seed {seed} done", flush=True)
    return out


def flamby_reference(prefix: str, data_dir: Path) -> dict:
    """FLamby's per-seed figures from its published results files (seeds 42-46)."""
    ref: dict = {}
    for seed in SEEDS:
        rows = list(csv.DictReader(open(data_dir / "flamby_results" / f"{prefix}_seed{seed}.csv")))
        methods = {r["Method"] for r in rows}
        for method in methods:
            rs = [r for r in rows if r["Method"] == method]
            clients = [
                float(r["Metric"])
                for r in sorted(rs, key=lambda r: r["Test"])
                if r["Test"].startswith("client_test")
            ]
            pooled = [float(r["Metric"]) for r in rs if r["Test"] == "Pooled Test"][0]
            ref.setdefault(method, []).append(dict(clients=clients, pooled=pooled))
    return ref


def summary(runs: list[dict]) -> dict:
    """Mean and sample std (ddof 1, as FLamby's tables) over seeds of both figures."""
    cm = [float(np.nanmean(r["clients"])) for r in runs]
    pooled = [r["pooled"] for r in runs]
    ddof = 1 if len(runs) > 1 else 0
    return {
        "client_mean": [float(np.mean(cm)), float(np.std(cm, ddof=ddof))],
        "pooled": [float(np.mean(pooled)), float(np.std(pooled, ddof=ddof))],
        "per_client": np.nanmean([r["clients"] for r in runs], axis=0).tolist(),
    }


def identical(runs: list[dict], ref: list[dict]) -> list[int]:
    """[cells equal to FLamby's published value, cells]: per seed, each client's test metric
    and the pooled one (equal: within 1e-6), over the runs whose seed FLamby published."""
    same = total = 0
    for r in runs:
        if r["seed"] not in SEEDS:
            continue
        f = ref[SEEDS.index(r["seed"])]
        ours, theirs = [*r["clients"], r["pooled"]], [*f["clients"], f["pooled"]]
        same += sum(abs(a - b) < 1e-6 for a, b in zip(ours, theirs, strict=True))
        total += len(ours)
    return [same, total]


def within(ours: list[float], theirs: list[float]) -> bool:
    return abs(ours[0] - theirs[0]) <= max(2 * theirs[1], 0.02)


def plot(tables: dict, out_dir: Path) -> None:
    fig = figure(tables)
    for ext in ("png", "pdf"):
        fig.savefig(out_dir / f"flamby.{ext}", dpi=90)


def figure(tables: dict):
    """Per-client and pooled test metric of each strategy, one panel per dataset (a Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fljax._plot import legend_outside, metric_label, styles

    fig, axes = plt.subplots(len(tables), 1, figsize=(15, 4.2 * len(tables)), squeeze=False)
    for ax, (name, table) in zip(axes[:, 0], tables.items(), strict=True):
        strategies = [s for s in table if not s.startswith("Local")]
        n_clients = len(table[strategies[0]]["fljax"]["per_client"])
        width = 0.8 / (n_clients + 1)
        x = np.arange(len(strategies))
        for j, style in zip(range(n_clients), styles(n_clients), strict=True):
            ax.bar(
                x + j * width,
                [table[s]["fljax"]["per_client"][j] for s in strategies],
                width,
                label=f"client {j}",
                color=style["color"],
            )
        ax.bar(
            x + n_clients * width,
            [table[s]["fljax"]["pooled"][0] for s in strategies],
            width,
            label="pooled test",
            color="black",
            alpha=0.7,
        )
        ax.set_xticks(x + 0.4, strategies, rotation=20)
        ax.set_xlabel("strategy")
        ax.set_ylabel(f"test {metric_label(SETUPS[name]['metric'])}")
        ax.set_title(f"{name}: per-client test metric, mean over 5 seeds (fljax)")
        ax.set_ylim(0, 1)
        legend_outside(ax)
    fig.tight_layout()
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=Path("outputs/flamby"))
    p.add_argument("--datasets", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument(
        "--init", default="flamby", choices=INITS,
        help="initial weights: FLamby's own per seed (flamby_init.npz) or fljax's draw",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.init == "flamby" and not set(args.seeds) <= set(SEEDS):
        p.error(f"--init flamby: FLamby's weights exist for seeds {list(SEEDS)} only, got "
                f"--seeds {args.seeds} (--init fljax draws any seed)")  # fmt: skip
    fljax.set_host_device_count()
    jax.config.update("jax_compilation_cache_dir", str(ROOT / ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tables, figures = {}, {}
    for name in args.datasets:
        setup = SETUPS[name]
        runs = run_dataset(name, setup, args.data_dir, args.seeds, args.init)
        ref = flamby_reference(setup["flamby"], args.data_dir)
        table = {}
        for strategy, rs in runs.items():
            ours = summary(rs)
            flamby_name = FLAMBY_METHOD.get(strategy, strategy)
            theirs = summary(ref[flamby_name]) if flamby_name in ref else None
            table[strategy] = {"fljax": ours, "flamby": theirs}
            if theirs is not None:
                table[strategy]["identical"] = identical(rs, ref[flamby_name])
        tables[name] = table
        figures[name] = {
            s: {"client_mean": t["fljax"]["client_mean"], "pooled": t["fljax"]["pooled"]}
            for s, t in table.items()
        }
        print(
            f"\n{name} ({setup['metric']}), mean +- std over seeds {args.seeds}; FLamby: "
            f"seeds {SEEDS[0]}-{SEEDS[-1]}; ok = within max(2 FLamby std, 0.02); same = "
            "per-seed cells (client tests, pooled) equal to FLamby's"
        )
        print(
            f"{'strategy':14s} {'fljax client mean':>19s} {'FLamby':>17s} ok  "
            f"{'fljax pooled':>17s} {'FLamby':>17s} ok  same"
        )
        for strategy, t in table.items():
            o, f = t["fljax"], t["flamby"]

            def cell(v):
                return f"{v[0]:.4f} +- {v[1]:.4f}"

            if f is None:
                print(
                    f"{strategy:14s} {cell(o['client_mean']):>19s} {'':>17s}     "
                    f"{cell(o['pooled']):>17s}"
                )
                continue
            ok_c = "yes" if within(o["client_mean"], f["client_mean"]) else "NO"
            ok_p = "yes" if within(o["pooled"], f["pooled"]) else "NO"
            print(
                f"{strategy:14s} {cell(o['client_mean']):>19s} {cell(f['client_mean']):>17s} "
                f"{ok_c:3s} {cell(o['pooled']):>17s} {cell(f['pooled']):>17s} {ok_p:3s} "
                f"{t['identical'][0]}/{t['identical'][1]}"
            )
    plot(tables, args.out)
    (args.out / "flamby_tables.json").write_text(json.dumps(tables, indent=1))
    wall = time.perf_counter() - t0
    print(f"\nfigure: {args.out / 'flamby.png'}  wall {wall:.0f} s")
    print(json.dumps({**figures, "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
