"""Privacy / utility / leakage trade-off, at the two levels that matter in healthcare FL.

1. Record level, cross-silo (FLamby Fed-Heart-Disease, 4 real hospitals that join every round):
   FedAvg with DP-SGD inside every hospital, calibrated to a target epsilon per patient record.
   For each epsilon: pooled test accuracy / AUROC, and two membership-inference attacks:
   loss-threshold on the final global model (Yeom et al. 2018), and a difficulty-calibrated
   loss attack (Watson et al. 2022) by the server on Cleveland's first update (reference: the
   broadcast initial model).
2. Client level, cross-device-like (500 synthetic hospitals, Poisson q = 0.1 per round):
   DP-FedAvg (McMahan et al. 2018) calibrated to a target epsilon per hospital.

Prints both tables and writes ``docs/figures/dp_tradeoff.png``. Run:
``python experiments/dp_tradeoff.py --data-dir ../shared/data`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fljax
from fljax import privacy as P
from fljax.client import DPSGD, make_client_update, plan_local_work

ROOT = Path(__file__).resolve().parent.parent
EPSILONS = (math.inf, 16.0, 8.0, 4.0, 2.0, 1.0, 0.5)
DELTA = 1e-5


def _real(split, c):
    n = int(split.num_examples[c])
    return np.asarray(split.x[c, :n]), np.asarray(split.y[c, :n])


def _pooled(split):
    xs, ys = zip(*(_real(split, c) for c in range(split.x.shape[0])), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _balanced(members, nonmembers, rng):
    """Equal numbers of members and non-members (AUC is insensitive, advantage is not)."""
    k = min(len(members[1]), len(nonmembers[1]))

    def pick(split):
        idx = rng.permutation(len(split[1]))[:k]  # one draw for x and y
        return split[0][idx], split[1][idx]

    return pick(members), pick(nonmembers)


def record_level(data_dir: Path | None, rounds: int, seed: int, epsilons) -> list[dict]:
    fed = fljax.data.load(
        "heart_disease",
        data_dir=None if data_dir is None else data_dir / "heart_disease",
        metrics=("accuracy", "auroc"),
    )
    # Wide enough to memorize (train accuracy ~0.95 without DP): the regime where MIAs work.
    model = fljax.models.get("mlp", num_classes=2, hidden=(128, 128))
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=2, batch_size=16)
    params0 = model.init(jax.random.key(seed), fed.sample())
    rng = np.random.default_rng(seed)
    members, nonmembers = _balanced(_pooled(fed.train), _pooled(fed.test), rng)
    site = 0  # the server attacks Cleveland's first update (from the initial model)
    site_members, site_nonmembers = _balanced(_real(fed.train, site), _real(fed.test, site), rng)
    n_site = len(_real(fed.train, site)[1])
    plan = plan_local_work(
        fed.train.num_examples, fed.train.x.shape[1], local_epochs=2, local_steps=None,
        batch_size=16,
    )  # fmt: skip
    rows = []
    for eps in epsilons:
        privacy = None
        if math.isfinite(eps):
            privacy = P.get("dp_sgd", clip_norm=1.0, target_epsilon=eps, delta=DELTA)
        t0 = time.perf_counter()
        result = fljax.simulate(
            algo, model, fed, rounds=rounds, clients_per_round=fed.num_clients, seed=seed,
            eval_every=rounds, privacy=privacy, params=params0, eval_train=True,
        )  # fmt: skip
        m = result.final_metrics
        z, dp = 0.0, None
        if privacy is not None:
            z = result.history[-1]["privacy"]["noise_multiplier"]
            dp = DPSGD(1.0, z, 16)
        update = make_client_update(model, "classification", algo.client_optimizer, plan,
                                    dp_sgd=dp)  # fmt: skip
        x, y = fed.train.x[site], fed.train.y[site]
        out = update(params0, jnp.asarray(x), jnp.asarray(y), jnp.int32(n_site),
                     jax.random.key(seed + 1))  # fmt: skip
        client_model = jax.tree.map(jnp.add, params0, out.delta)
        loss_mia = P.loss_threshold_mia(model, result.params, members, nonmembers)
        update_mia = P.calibrated_loss_mia(model, params0, client_model, site_members,
                                           site_nonmembers)  # fmt: skip
        rows.append(
            dict(
                epsilon=eps,
                noise_multiplier=z,
                epsilon_reported=result.history[-1].get("epsilon", math.inf),
                train_accuracy=m["train_accuracy"],
                accuracy=m["test_accuracy"],
                auroc=m["test_auroc"],
                loss_mia_auc=loss_mia.auc,
                loss_mia_advantage=loss_mia.advantage,
                update_mia_auc=update_mia.auc,
                update_mia_advantage=update_mia.advantage,
                seconds=time.perf_counter() - t0,
            )
        )
        print(_fmt_row(rows[-1]), flush=True)
    return rows


def client_level(rounds: int, seed: int, epsilons) -> list[dict]:
    fed = fljax.data.load("synthetic_hospitals", num_clients=500, mean_size=60, seed=0)
    model = fljax.models.get("mlp", num_classes=2, hidden=(32,))
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=16,
                                weighting="uniform")  # fmt: skip
    rows = []
    for eps in epsilons:
        privacy = None
        if math.isfinite(eps):
            privacy = P.get("central_dp", clip_norm=0.5, target_epsilon=eps, delta=DELTA)
        t0 = time.perf_counter()
        result = fljax.simulate(
            algo, model, fed, rounds=rounds, clients_per_round=50, seed=seed, eval_every=rounds,
            privacy=privacy,
        )  # fmt: skip
        info = result.history[-1].get("privacy", {})
        m = result.final_metrics
        rows.append(
            dict(
                epsilon=eps,
                noise_multiplier=info.get("noise_multiplier", 0.0),
                epsilon_reported=info.get("epsilon", math.inf),
                cohort_cap=info.get("cohort_cap", 50),
                delta_cap=info.get("delta_cap", 0.0),
                accuracy=m["test_accuracy"],
                auroc=m["test_auroc"],
                seconds=time.perf_counter() - t0,
            )
        )
        r = rows[-1]
        print(
            f"  eps={r['epsilon']:>5}  z={r['noise_multiplier']:.3f}  "
            f"acc={r['accuracy']:.4f}  auroc={r['auroc']:.4f}  ({r['seconds']:.1f} s)",
            flush=True,
        )
    return rows


def _fmt_row(r):
    return (
        f"  eps={r['epsilon']:>5}  z={r['noise_multiplier']:.3f}  acc={r['accuracy']:.4f}  "
        f"auroc={r['auroc']:.4f}  loss-MIA AUC={r['loss_mia_auc']:.3f} "
        f"adv={r['loss_mia_advantage']:.3f}  "
        f"update-MIA AUC={r['update_mia_auc']:.3f} adv={r['update_mia_advantage']:.3f}  "
        f"({r['seconds']:.1f} s)"
    )


def _table(rows, cols):
    head = "| " + " | ".join(c for c, _ in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = [
        "| " + " | ".join(("inf" if (isinstance(r[k], float) and math.isinf(r[k])) else
                            f"{r[k]:{f}}") for _, (k, f) in cols) + " |"
        for r in rows
    ]  # fmt: skip
    return "\n".join([head, sep, *body])


def plot(record, client, path: Path) -> None:
    fig = figure(record, client)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def figure(record, client):
    """Left and middle: pooled test accuracy and AUROC against epsilon (record-level DP-SGD,
    client-level DP-FedAvg) with the non-private values dashed; right: membership-inference
    AUC against record-level epsilon (a Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fljax._plot import legend_below

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8))
    for ax, rows, title in (
        (axes[0], record, "record-level DP-SGD, Fed-Heart-Disease (4 sites)"),
        (axes[1], client, "client-level DP-FedAvg, 500 synthetic hospitals"),
    ):
        finite = [r for r in rows if math.isfinite(r["epsilon"])]
        eps = [r["epsilon"] for r in finite]
        ax.plot(eps, [r["accuracy"] for r in finite], "o-", label="DP accuracy")
        ax.plot(eps, [r["auroc"] for r in finite], "s-", label="DP AUROC")
        ax.axhline(rows[0]["accuracy"], color="C0", ls="--", label="non-private accuracy")
        ax.axhline(rows[0]["auroc"], color="C1", ls="--", label="non-private AUROC")
        ax.set_xscale("log")
        ax.set_xlabel("epsilon (delta = 1e-5)")
        ax.set_ylabel("pooled test metric")
        ax.set_title(title, fontsize=9)
        legend_below(ax)
    ax = axes[2]
    finite = [r for r in record if math.isfinite(r["epsilon"])]
    eps = [r["epsilon"] for r in finite]
    ax.plot(eps, [r["update_mia_auc"] for r in finite], "o-", label="calibrated update MIA")
    ax.plot(eps, [r["loss_mia_auc"] for r in finite], "s-", label="loss-threshold MIA")
    ax.axhline(record[0]["update_mia_auc"], color="C0", ls="--", label="update MIA, no DP")
    ax.axhline(record[0]["loss_mia_auc"], color="C1", ls="--", label="loss MIA, no DP")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("record-level epsilon")
    ax.set_ylabel("attack AUC (0.5 = chance)")
    ax.set_title("membership inference vs epsilon (Fed-Heart-Disease)", fontsize=9)
    legend_below(ax)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--rounds", type=int, default=30, help="record-level rounds")
    ap.add_argument("--client-rounds", type=int, default=100, help="client-level rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--epsilons",
        default=",".join(str(e) for e in EPSILONS),
        help="comma-separated target epsilons; inf = no DP (must come first)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    args = ap.parse_args(argv)
    epsilons = tuple(float(e) for e in args.epsilons.split(","))
    if math.isfinite(epsilons[0]):
        raise ValueError("--epsilons must start with inf (the non-private reference)")
    fljax.set_host_device_count()
    print("record level (DP-SGD in each hospital, per-record epsilon, worst hospital):")
    record = record_level(args.data_dir, args.rounds, args.seed, epsilons)
    print("client level (DP-FedAvg, Poisson q = 0.1, per-hospital epsilon):")
    client = client_level(args.client_rounds, args.seed, epsilons)
    print()
    print(_table(record, [
        ("epsilon", ("epsilon", ".1f")), ("z", ("noise_multiplier", ".3f")),
        ("accuracy", ("accuracy", ".4f")), ("AUROC", ("auroc", ".4f")),
        ("train acc.", ("train_accuracy", ".4f")),
        ("loss MIA AUC", ("loss_mia_auc", ".3f")), ("loss MIA adv.", ("loss_mia_advantage", ".3f")),
        ("update MIA AUC", ("update_mia_auc", ".3f")),
        ("update MIA adv.", ("update_mia_advantage", ".3f")),
    ]))  # fmt: skip
    print()
    print(_table(client, [
            ("epsilon", ("epsilon", ".1f")), ("z", ("noise_multiplier", ".3f")),
            ("cohort cap", ("cohort_cap", "d")), ("delta_cap", ("delta_cap", ".1e")),
            ("accuracy", ("accuracy", ".4f")),
            ("AUROC", ("auroc", ".4f")),
    ]))  # fmt: skip
    path = args.out / "dp_tradeoff.png"
    plot(record, client, path)
    print(f"figure: {path}")
    out = {"record_level": record, "client_level": client}
    print(json.dumps(fljax._io.to_jsonable(out)))
    return out


if __name__ == "__main__":
    main()
