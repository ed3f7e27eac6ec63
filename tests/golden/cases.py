"""The golden-history matrix: small runs covering every algorithm and option of the round.

Each case is a function returning ``(args, kwargs)`` for :func:`fljax.simulate`. The recorded
outputs (``tests/golden/<name>.json``) were produced by the engine as it stood BEFORE the round
was rebuilt from stages; the ``robust_*`` cases when robust aggregation was added
(``python tests/golden/record.py``, 8 host CPU devices as in ``conftest.py``);
``tests/test_golden.py`` requires every later engine to reproduce them. All were recorded
again, with the engine unchanged, when feature standardization moved to float64 (issue 19):
the breast-cancer federation's float32 features changed in their last bits, the histories by
<= 6e-6 relative (top-k's chosen coordinates in ``topk_ef`` / ``scaffold_topk`` by more),
every count, selection and step number unchanged.

Cases are tiny (logistic / small MLP, 3-4 rounds) so the whole matrix runs in well under a
minute from the compilation cache.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

import fljax
from fljax import compress
from fljax import privacy as P
from fljax.system import profiles, system

GOLDEN_DIR = Path(__file__).resolve().parent

_FEDS: dict = {}


def fed(name: str = "bc"):
    """Shared small federations (built once per process)."""
    if name not in _FEDS:
        if name == "bc":
            _FEDS[name] = fljax.data.load(
                "breast_cancer", num_clients=8, partition="dirichlet", alpha=0.5, seed=0
            )
        elif name == "hosp":
            _FEDS[name] = fljax.data.load(
                "synthetic_hospitals", num_clients=12, num_features=5, mean_size=40.0, seed=1
            )
        else:
            raise KeyError(name)
    return _FEDS[name]


LOGISTIC = fljax.models.get("logistic", num_classes=2)
MLP = fljax.models.get("mlp", num_classes=2, hidden=(8,))
MLP_BN = fljax.models.get("mlp_bn", num_classes=2, hidden=(8,))


def _algo(name="fedavg", **kw):
    base = {"client_lr": 0.1, "local_epochs": 1, "batch_size": 16}
    return fljax.algorithms.get(name, **(base | kw))


def _sim(algo, model=LOGISTIC, data="bc", **kw):
    args = {"rounds": 4, "clients_per_round": 4, "seed": 0, "eval_every": 2} | kw
    return (algo, model, fed(data)), args


CASES: dict[str, Callable[[], tuple]] = {}


def case(name: str):
    def deco(fn):
        CASES[name] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------- algorithms
@case("fedavg")
def _():
    return _sim(_algo())


@case("fedavg_uniform_eval_train")
def _():
    return _sim(_algo(weighting="uniform"), eval_train=True)


@case("fedavg_steps_mlp")
def _():
    return _sim(_algo(local_epochs=None, local_steps=3), model=MLP)


@case("fedavg_per_client_steps")
def _():
    return _sim(_algo(local_epochs=None, local_steps=[1, 2, 3, 1, 2, 3, 1, 2]))


@case("fedavg_full_batch_one_device")
def _():
    return _sim(_algo(batch_size=None), devices=jax.local_devices()[:1])


@case("fedavgm")
def _():
    return _sim(_algo("fedavgm", server_momentum=0.9))


@case("fedadam")
def _():
    return _sim(_algo("fedadam", server_lr=0.05))


@case("fedyogi")
def _():
    return _sim(_algo("fedyogi", server_lr=0.05))


@case("fedadagrad")
def _():
    return _sim(_algo("fedadagrad", server_lr=0.05))


@case("fedprox")
def _():
    return _sim(_algo("fedprox", mu=0.1))


@case("scaffold")
def _():
    return _sim(_algo("scaffold"))


@case("fednova")
def _():
    return _sim(_algo("fednova"))


@case("feddyn")
def _():
    return _sim(_algo("feddyn", alpha=0.01))


@case("cyclic")
def _():
    return _sim(_algo("cyclic"), clients_per_round=3)


@case("cyclic_shuffle")
def _():
    return _sim(_algo("cyclic", shuffle=True), clients_per_round=3)


@case("centralized")
def _():
    return _sim(_algo("centralized"), rounds=3)


@case("local")
def _():
    return _sim(_algo("local"))


@case("fedbuff")
def _():
    return _sim(
        _algo("fedbuff", buffer_size=3, concurrency=5),
        system=system(profiles(8, kind="hospital", seed=0)),
        rounds=5,
    )


@case("fedasync")
def _():
    return _sim(
        _algo("fedasync", concurrency=4),
        system=system(profiles(8, kind="hospital", seed=0)),
        rounds=5,
    )


@case("fedper")
def _():
    return _sim(_algo("fedper"), model=MLP)


@case("fedrep")
def _():
    return _sim(_algo("fedrep", head_epochs=2), model=MLP)


@case("fedbn")
def _():
    return _sim(_algo("fedbn"), model=MLP_BN)


@case("ditto")
def _():
    return _sim(_algo("ditto", lam=0.1))


@case("apfl")
def _():
    return _sim(_algo("apfl", alpha=0.5), model=MLP)


# ------------------------------------------------------------------------------- privacy
@case("central_dp_poisson")
def _():
    return _sim(_algo(), privacy=P.get("central_dp", clip_norm=1.0, noise_multiplier=1.1))


@case("central_dp_fixed")
def _():
    dp = P.get("central_dp", clip_norm=1.0, noise_multiplier=1.1, sampling="fixed")
    return _sim(_algo(), privacy=dp)


@case("adaptive_dp")
def _():
    dp = P.get("adaptive_dp", noise_multiplier=0.3, count_noise=1.0, sampling="fixed")
    return _sim(_algo(weighting="uniform"), privacy=dp)


@case("local_dp")
def _():
    return _sim(_algo(), privacy=P.get("local_dp", clip_norm=1.0, noise_multiplier=0.5))


@case("dp_sgd")
def _():
    return _sim(_algo(), privacy=P.get("dp_sgd", clip_norm=1.0, noise_multiplier=1.0))


@case("secagg")
def _():
    return _sim(_algo(), secure_aggregation=P.get("secagg"))


@case("secagg_plus_stragglers")
def _():
    return _sim(
        _algo(),
        secure_aggregation=P.get("secagg_plus", degree=2),
        clients_per_round=6,
        stragglers=0.34,
    )


@case("secagg_central_dp")
def _():
    dp = P.get("central_dp", clip_norm=1.0, noise_multiplier=1.0, sampling="fixed")
    return _sim(
        _algo(weighting="uniform"),
        privacy=dp,
        secure_aggregation=P.get("secagg", clip_range=1.0),
    )


@case("secagg_selective")
def _():
    return _sim(
        _algo(),
        secure_aggregation=P.get("secagg"),
        compression=compress.get("selective", shared="Dense_0/bias"),
    )


# --------------------------------------------------------------------------- compression
@case("topk_ef")
def _():
    return _sim(_algo(), compression=compress.get("topk", fraction=0.3, error_feedback=True))


@case("randk")
def _():
    return _sim(_algo(), compression=compress.get("randk", fraction=0.5))


@case("qsgd")
def _():
    return _sim(_algo(), compression=compress.get("qsgd", levels=4))


@case("sign_ef_mlp")
def _():
    return _sim(_algo(), model=MLP, compression=compress.get("sign", error_feedback=True))


@case("powersgd_mlp")
def _():
    return _sim(_algo(), model=MLP, compression=compress.get("powersgd", rank=1))


@case("downlink_topk")
def _():
    return _sim(_algo(), downlink=compress.get("topk", fraction=0.5))


@case("scaffold_topk")
def _():
    return _sim(_algo("scaffold"), compression=compress.get("topk", fraction=0.5))


# -------------------------------------------------------------------------------- system
def _prof(**kw):
    return profiles(8, kind="hospital", seed=0, **kw)


@case("system_uniform")
def _():
    return _sim(_algo(), system=system(_prof()))


@case("system_deadline_drop")
def _():
    return _sim(_algo(), system=system(_prof(availability=0.8), deadline=2.0))


@case("system_deadline_partial")
def _():
    return _sim(
        _algo(local_epochs=2),
        system=system(_prof(), deadline=2.0, deadline_policy="partial"),
    )


@case("select_available")
def _():
    return _sim(_algo(), system=system(_prof(availability=0.6), selection="available"))


@case("select_fastest")
def _():
    return _sim(_algo(), system=system(_prof(), selection="fastest"))


@case("select_feasible")
def _():
    return _sim(_algo(), system=system(_prof(), selection="feasible", deadline=3.0))


@case("select_oort")
def _():
    return _sim(_algo(), system=system(_prof(), selection="oort"), rounds=5)


@case("select_power_of_choice")
def _():
    return _sim(_algo(), system=system(_prof(), selection="power_of_choice", candidates=6))


@case("select_poisson")
def _():
    return _sim(_algo(), system=system(_prof(), selection="poisson"))


@case("select_poisson_unavailable")
def _():
    return _sim(_algo(), system=system(profiles(8, kind="uniform", availability=0.5),
                                       selection="poisson"))  # fmt: skip


@case("system_unavailable_stragglers")
def _():
    return _sim(_algo(), system=system(profiles(8, kind="uniform", availability=0.6)),
                stragglers=0.25)  # fmt: skip


@case("system_diurnal")
def _():
    return _sim(_algo(), system=system(_prof(availability=0.9), diurnal=0.5))


@case("stragglers_drop")
def _():
    return _sim(_algo(), stragglers=0.25)


@case("stragglers_partial")
def _():
    return _sim(_algo(local_epochs=3), stragglers=0.5, straggler_policy="partial")


# ------------------------------------------------------------------------ runs and scale
@case("seeds")
def _():
    return _sim(_algo(), seeds=[0, 1, 2])


@case("sweep_seeds")
def _():
    return _sim(_algo("fedadam", server_lr=0.05), seeds=[0, 1],
                sweep={"client_lr": [0.05, 0.2]})  # fmt: skip


@case("chunked_streaming")
def _():
    return _sim(_algo(), clients_per_round=6, client_chunk=4)


@case("chunked_fednova")
def _():
    return _sim(_algo("fednova"), clients_per_round=6, client_chunk=4)


@case("sharded_8")
def _():
    return _sim(_algo("scaffold"), clients_per_round=8)


@case("hospitals_warm_start")
def _():
    model = fljax.models.get("mlp", num_classes=2, hidden=(4,))
    params = model.init(jax.random.key(5), fed("hosp").sample())
    return _sim(_algo("fedprox", mu=0.01), model=model, data="hosp", params=params,
                clients_per_round=5)  # fmt: skip


# ------------------------------------------------------------------------ serialization
# --- recorded after issue 18 (robust aggregation, attacks, fault isolation) ---------------


@case("robust_bucketed_cc_alie")
def _():
    agg = fljax.aggregate.get("centered_clipping", tau=0.5, iterations=2, bucket_size=2)
    return _sim(_algo(), MLP, clients_per_round=8, aggregator=agg,
                attack=fljax.attacks.get("alie", fraction=0.25))  # fmt: skip


@case("robust_krum_backdoor")
def _():
    return _sim(_algo(), MLP, clients_per_round=8, aggregator=fljax.aggregate.get("krum", f=1),
                attack=fljax.attacks.get("backdoor", ids=[2, 5], scale=3.0))  # fmt: skip


@case("robust_fltrust_reject")
def _():
    return _sim(_algo(), MLP, clients_per_round=6,
                aggregator=fljax.aggregate.get("fltrust", root_size=30),
                attack=fljax.attacks.get("scaling", ids=[1, 3], scale=100.0),
                reject_norm=5.0)  # fmt: skip


def _plain(x):
    """JSON-safe copy; floats keep every bit (repr round-trips), non-finite as strings."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray | jax.Array):
        return _plain(np.asarray(x).tolist())
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else repr(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def outputs(result) -> dict:
    """What a golden file holds of one :class:`fljax.SimulationResult`."""
    return {
        "history": _plain(result.history),
        "params": _plain(jax.tree.leaves(jax.device_get(result.params))),
        "selected": _plain(result.selected),
        "contributed": _plain(result.contributed),
        "num_steps": _plain(result.num_steps),
    }


def run(name: str) -> list[dict]:
    """Runs case ``name``; one output dict per run (several with ``seeds`` / ``sweep``)."""
    args, kwargs = CASES[name]()
    result = fljax.simulate(*args, **kwargs)
    results = result if isinstance(result, list) else [result]
    return [outputs(r) for r in results]


def path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.json"


def load(name: str) -> list[dict]:
    return json.loads(path(name).read_text())
