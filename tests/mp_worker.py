"""One process of the 2-process tests (``tests/test_multiprocess.py``): joins the run from
the ``FLJAX_*`` variables, runs each case of :data:`CASES` and (process 0) writes what it
got to the JSON file named by the first argument."""

import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # only as a worker: importing it must not touch the test process
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import fljax  # noqa: E402
from fljax import distributed  # noqa: E402

DATA = dict(num_clients=10, num_features=4, mean_size=16, seed=3)
RUN = dict(rounds=3, clients_per_round=4, seed=1)


def cases():
    """``{name: simulate keyword arguments}`` of the compared runs."""
    P = fljax.privacy
    algo = lambda name: fljax.algorithms.get(name, client_lr=0.1, local_epochs=1,  # noqa: E731
                                              batch_size=8)  # fmt: skip
    return {
        "fedavg": dict(algorithm=algo("fedavg")),
        "scaffold": dict(algorithm=algo("scaffold")),
        "client_dp": dict(algorithm=algo("fedavg"), privacy=P.get(
            "central_dp", noise_multiplier=0.8, clip_norm=0.5, max_cohort=6)),
        "secagg": dict(algorithm=algo("fedavg"), secure_aggregation=P.get("secagg")),
        "seeds": dict(algorithm=algo("fedavg"), seeds=[1, 2]),
    }


def outcome(result) -> dict:
    """What must match a single-process run: every history entry and the final state (of
    every run of a ``seeds=`` program)."""
    if isinstance(result, list):
        return {"runs": [outcome(r) for r in result]}
    leaves = lambda tree: [np.asarray(x, np.float64).ravel().tolist()  # noqa: E731
                           for x in jax.tree.leaves(tree)]  # fmt: skip
    return {"history": [{k: e[k] for k in ("round", "metrics", "client_metrics")}
                        for e in result.history],
            "params": leaves(result.params),
            "client_states": leaves(result.state.client_states),
            "selected": np.asarray(result.selected).tolist()}  # fmt: skip


def main(out_path: str) -> None:
    distributed.initialize()
    from fljax.engine import RunArgs, prepare
    from fljax.engine._identity import data_digest

    data = fljax.data.load("synthetic_hospitals", **DATA)
    model = fljax.models.get("logistic", num_classes=2)
    got = {"hosted": list(data.hosted), "federation_bytes": int(
        sum(np.asarray(a).nbytes for split in (data.train, data.test) for a in split[:2])),
        "digest": data_digest(data)}  # fmt: skip
    for name, kw in cases().items():
        got[name] = outcome(fljax.simulate(model=model, data=data, **RUN, **kw))
    run = prepare(RunArgs(model=model, data=data, **RUN, **cases()["scaffold"]))
    c_i = jax.tree.leaves(run.state.client_states)[0]
    got["scaffold_rows_held"] = sum(s.data.shape[0] for s in c_i.addressable_shards)
    ck = os.path.join(os.path.dirname(out_path), "scaffold_resume")  # shared by both
    kw = cases()["scaffold"]
    fljax.simulate(model=model, data=data, **RUN, **kw, checkpoint_dir=ck)
    got["scaffold_resumed"] = outcome(fljax.simulate(
        model=model, data=data, **(RUN | {"rounds": 5}), **kw, checkpoint_dir=ck, resume=True))
    got["shard_writers"] = sorted(p.name for p in Path(ck).glob("step_*/state/ocdbt.process_*"))
    with open(f"{out_path}.{jax.process_index()}", "w") as f:  # each process its own file
        json.dump(got, f)


if __name__ == "__main__":
    main(sys.argv[1])
