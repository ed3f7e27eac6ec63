"""Exact Shapley values of the 4 Fed-Heart-Disease hospitals as ONE program, against running
the same coalitions one by one.

Fed-Heart-Disease (``--data-dir``, the FLamby files), 20% of each hospital's training
records held out as the validation split of the utility (accuracy), a logistic model, FedAvg
with 10 local SGD steps of batch 4 (client_lr 0.05), full participation, ``--rounds``
rounds. Exact Shapley needs the 15 non-empty coalitions x ``--seeds`` seeds (75 federations
for 5 seeds; the empty coalition is the initial model, not trained). Measured:
  program_s            ``fljax.valuation.shapley`` end to end: the coalitions x seeds as one
                       compiled program (``simulate(subsets=..., seeds=...)``), compile and
                       evaluation included;
  one_by_one_s         per federation, ``fljax.simulate`` on the reduced federation
                       (``fljax.data.select_clients``), one seed at a time, compile included
                       (what a loop over coalitions costs); timed on ``--sample`` federations
                       (default all) and scaled to all of them;
  per_federation_ratio program cost per federation / one-by-one cost per federation.
The last line is one JSON object.

    python benchmarks/valuation.py [--seeds 5 --rounds 15 --sample 75]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _setup(data_dir: Path):
    import fljax
    from fljax import valuation as V

    fed = fljax.data.load("heart_disease", data_dir=str(data_dir), standardize="global",
                          metrics=("accuracy",))  # fmt: skip
    fed, val = V.holdout(fed, 0.2, seed=0)
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=None, local_steps=10,
                                batch_size=4)  # fmt: skip
    return fed, val, model, algo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/heart_disease")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--sample", type=int, default=None,
                   help="federations timed one by one (default: all of them)")
    args = p.parse_args()
    import fljax
    from fljax import valuation as V

    fed, val, model, algo = _setup(args.data_dir)
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    g = V.game(algo, model, fed, validation=val, rounds=args.rounds, seeds=seeds)
    values = V.shapley(g)
    program_s = time.perf_counter() - t0
    n = fed.num_clients
    runs = [(s, c) for s in seeds for c in itertools.product((0, 1), repeat=n) if any(c)]
    sample = runs
    if args.sample is not None:  # evenly spread over the seeds and coalitions
        sample = runs[:: max(1, len(runs) // args.sample)][: args.sample]
    t0 = time.perf_counter()
    for s, c in sample:
        sub = fljax.data.select_clients(fed, np.flatnonzero(c))
        fljax.simulate(algo, model, sub, rounds=args.rounds, clients_per_round=sub.num_clients,
                       seed=s, eval_every=args.rounds)  # fmt: skip
    one_s = (time.perf_counter() - t0) / len(sample)
    per_fed = program_s / len(runs)
    print(values.table())
    result = {
        "hospitals": n, "seeds": args.seeds, "rounds": args.rounds,
        "federations": len(runs), "programs": g.programs, "program_s": round(program_s, 2),
        "program_per_federation_s": round(per_fed, 4),
        "one_by_one_per_federation_s": round(one_s, 4), "one_by_one_timed": len(sample),
        "one_by_one_s": round(one_s * len(runs), 2),
        "per_federation_ratio": round(per_fed / one_s, 4),
        "shapley_mean": values.mean.round(4).tolist(),
        "shapley_ci95": values.interval().round(4).tolist(), "sites": list(values.sites),
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
