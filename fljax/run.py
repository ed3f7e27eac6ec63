"""``fljax-run`` / ``python -m fljax.run``: the Hydra entry point.

Composes ``conf/`` (groups ``dataset``, ``model``, ``algorithm``, ``compression``,
``privacy``, ``secagg``, ``system``), runs :func:`fljax.simulate`
and writes the run folder: ``.hydra/`` (composed config), ``metrics.jsonl`` (appended at every
evaluation), ``summary.json`` and ``checkpoint/`` (final params, orbax).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import jax
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fljax import _folder, distributed
from fljax._folder import RESUME_DIR
from fljax._io import (
    SUMMARY_FILE,
    CorruptCheckpointError,
    MetricsWriter,
    save_params,
    step_rounds,
    to_jsonable,
    write_atomic,
)
from fljax.data import drop_empty_clients
from fljax.metrics import HIGHER_IS_BETTER
from fljax.models import load_weights
from fljax.report import mean_std
from fljax.simulate import SimulationResult, auto_client_chunk, simulate

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _shown_clients(cm: dict, metric: str, num_clients: int, max_rows: int | None) -> list:
    """The clients a table shows: all, or the ``max_rows // 2`` worst and best on ``metric``
    (``None`` marks the gap between them)."""
    if max_rows is None or num_clients <= max_rows:
        return list(range(num_clients))
    higher = HIGHER_IS_BETTER.get(metric.removeprefix("test_"), True)
    values = np.asarray([np.nan if v is None else v for v in cm[metric]], np.float64)
    order = np.argsort(np.where(np.isnan(values), np.inf if higher else -np.inf, values))
    order = order if higher else order[::-1]  # worst first
    half = max(max_rows // 2, 1)
    return [*order[:half].tolist(), None, *order[-half:].tolist()]


def client_table(data, entry: dict, max_rows: int | None = 20) -> str:
    """A per-hospital table of the test metrics of one history entry; with more than
    ``max_rows`` clients, the worst and best half of ``max_rows`` on the first metric and a
    line saying how many are not shown (``None``: every client)."""
    cm = entry["client_metrics"]
    metric_names = [k for k in cm if k.startswith("test_")]
    header = ["client", "train n", "test n", *[k.removeprefix("test_") for k in metric_names]]
    rows = []
    shown = _shown_clients(cm, metric_names[0], len(data.client_names), max_rows)
    for i in shown:
        if i is None:
            hidden = len(data.client_names) - len(shown) + 1
            rows.append([f"... {hidden} more", "", ""] + ["..."] * len(metric_names))
            continue
        rows.append(
            [data.client_names[i], str(int(data.num_examples[i])), str(cm["num_test_examples"][i])]
            + [_fmt(cm[k][i]) for k in metric_names]
        )
    m = entry["metrics"]
    rows.append(
        ["pooled", str(int(data.num_examples.sum())), str(sum(cm["num_test_examples"]))]
        + [_fmt(m[k]) for k in metric_names]
    )
    rows.append(["client mean", "", ""] + [_fmt(m[k + "_client_mean"]) for k in metric_names])
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _loggers(cfg: DictConfig, run_dir: Path) -> list:
    """The loggers switched on in ``cfg.loggers`` (none by default)."""
    from fljax.loggers import MLflowLogger, TensorBoardLogger, flatten

    opts = cfg.get("loggers") or {}
    out = []
    if opts.get("tensorboard", False):
        out.append(TensorBoardLogger(run_dir / "tensorboard"))
    if opts.get("mlflow", False):
        params = flatten(OmegaConf.to_container(cfg, resolve=True))
        out.append(
            MLflowLogger(
                params,
                experiment=opts.get("mlflow_experiment", "fljax"),
                run_name=run_dir.name,
                tracking_uri=opts.get("mlflow_uri"),
            )
        )
    return out


def _optional(cfg: DictConfig, group: str, **kwargs):
    """The object of an optional config group (``compression``, ``privacy``, ...), or None."""
    if cfg.get(group) is None:
        return None
    return instantiate(cfg[group], _convert_="all", **kwargs)


def _client_chunk(cfg: DictConfig, algorithm, model, data) -> int | None:
    """``client_chunk``: null, a positive integer, or ``auto`` (the most clients whose local
    training fits in ``client_memory_gb``, from XLA's memory analysis)."""
    chunk = cfg.get("client_chunk")
    if chunk is None:
        return None
    if chunk == "auto":
        budget = float(cfg.get("client_memory_gb", 4.0)) * 2**30
        return auto_client_chunk(algorithm, model, data, int(cfg.clients_per_round), budget)
    if isinstance(chunk, bool) or not isinstance(chunk, int):
        raise ValueError(f"client_chunk must be null, a positive integer or auto, got {chunk!r}")
    return chunk


class _Components(NamedTuple):
    """What a composed config builds: the federation, model, algorithm and options."""

    data: Any
    model: Any
    algorithm: Any
    compression: Any
    downlink: Any
    privacy: Any
    secagg: Any
    system: Any
    aggregator: Any = None
    attack: Any = None


def _components(cfg: DictConfig) -> _Components:
    data = instantiate(cfg.dataset, _convert_="all")
    empty = cfg.get("empty_clients", "refuse")
    if empty not in ("refuse", "drop"):
        raise ValueError(f"empty_clients={empty!r} is not one of ('refuse', 'drop')")
    if empty == "drop":
        data = drop_empty_clients(data)
    model_kwargs = {}
    if cfg.model.get("num_classes") is None:
        model_kwargs["num_classes"] = data.num_classes
    model = instantiate(cfg.model, _convert_="all", **model_kwargs)
    return _Components(
        data, model, instantiate(cfg.algorithm, _convert_="all"), _optional(cfg, "compression"),
        _optional(cfg, "downlink"), _optional(cfg, "privacy"), _optional(cfg, "secagg"),
        _optional(cfg, "system", num_clients=data.num_clients), _optional(cfg, "aggregator"),
        _optional(cfg, "attack"),
    )  # fmt: skip


def _seeds_and_sweep(cfg: DictConfig) -> tuple[list | None, dict | None, list]:
    """``seeds`` and ``sweep`` of a many-runs config, and its runs ``[(seed, values)]``."""
    seeds, sweep = cfg.get("seeds"), cfg.get("sweep")
    if sweep is not None:  # float hyperparameters vmapped in the same program
        sweep = OmegaConf.to_container(sweep) if isinstance(sweep, DictConfig) else dict(sweep)
        seeds = seeds if seeds is not None else [int(cfg.seed)]
    if seeds is not None:  # one vmapped program; a sub-folder per run, one resume state
        seeds = [int(x) for x in seeds]
    n_values = len(next(iter(sweep.values()))) if sweep else 1
    runs = [(x, {k: float(v[i]) for k, v in (sweep or {}).items()})
            for x in (seeds or []) for i in range(n_values)]  # fmt: skip
    return seeds, sweep, runs


def _run_folder(run_dir: Path, seed_, values) -> Path:
    """The sub-folder of one run of a many-runs config."""
    return run_dir / ("seed_" + str(seed_) + "".join(f"_{k}_{v:g}" for k, v in values.items()))


class _Writer:
    """The metrics writer(s): one ``metrics.jsonl`` per run folder (per seed / setting)."""

    def __init__(self, run_dir: Path, runs: list, seeds, resume: bool):
        if seeds is None:
            self.writers = {None: MetricsWriter(run_dir, resume=resume)}
        else:
            self.writers = {(x, tuple(v.items())): MetricsWriter(_run_folder(run_dir, x, v),
                                                                 resume=resume)
                            for x, v in runs}  # fmt: skip
        self.many = seeds is not None

    def __call__(self, entry: dict) -> None:
        key = (entry["seed"], tuple(entry.get("sweep", {}).items())) if self.many else None
        self.writers[key](entry)

    @property
    def wrote(self) -> bool:
        """Whether any new entry was written (a resume that wrote none changed nothing)."""
        return any(w.wrote for w in self.writers.values())


def _summary_start(cfg: DictConfig, c: _Components) -> dict:
    return {
        "status": "running",
        "dataset": c.data.name,
        "num_clients": c.data.num_clients,
        "model": c.model.name,
        "algorithm": c.algorithm.name,
        "compression": None if c.compression is None else c.compression.name,
        "downlink": None if c.downlink is None else c.downlink.name,
        "privacy": None if c.privacy is None else c.privacy.hparams | {"name": c.privacy.name},
        "secagg": None if c.secagg is None else c.secagg.hparams | {"name": c.secagg.name},
        "aggregator": None if c.aggregator is None else {"name": c.aggregator.name,
                                                         **c.aggregator.hparams},
        "attack": None if c.attack is None else {"name": c.attack.name, **c.attack.hparams},
        "hparams": c.algorithm.hparams,
        "seed": int(cfg.seed),
        "rounds": int(cfg.rounds),
    }


def _finished(cfg: DictConfig, data, res: SimulationResult, objective: str) -> dict:
    """The summary fields of one finished run."""
    final = res.history[-1]
    run_s = res.wall_s - res.compile_s
    out = dict(
        status="finished",
        final_round=final["round"],
        metrics=final["metrics"],
        client_metrics=final["client_metrics"],
        client_names=list(data.client_names),
        num_params=res.num_params,
        wall_s=res.wall_s,
        compile_s=res.compile_s,
        client_map=res.client_map,
        rounds_per_s=int(cfg.rounds) / run_s if run_s > 0 else None,
        bytes_up=final["bytes_up"],
        bytes_down=final["bytes_down"],
        objective={"name": objective, "value": final["metrics"][objective]},
    )
    if "sim_time_s" in final:
        out["sim_time_s"] = final["sim_time_s"]
    if "secagg" in final:
        out["secagg_costs"] = final["secagg"]
    if "privacy" in final:
        out["epsilon"] = final["epsilon"]
        out["privacy_spent"] = final["privacy"]
    return out


def _many_runs_summary(cfg, data, run_dir, runs, results, summary, objective, seeds, sweep):
    """Each run's folder's summary and the top summary: every setting's mean and std
    over seeds, the best setting as the objective."""
    by_setting: dict[tuple, list] = {}
    for (x, v), res in zip(runs, results, strict=True):
        folder = _run_folder(run_dir, x, v)
        one = summary | _finished(cfg, data, res, objective) | {"seed": x, "sweep": v or None}
        if v:
            one["hparams"] = summary["hparams"] | v
        _write_summary(folder, one)
        by_setting.setdefault(tuple(v.items()), []).append(one["objective"]["value"])
    settings = [
        dict(zip(("mean", "std"), mean_std(vals), strict=True), sweep=dict(k) or None,
             per_seed=vals)
        for k, vals in by_setting.items()
    ]  # fmt: skip
    higher = HIGHER_IS_BETTER.get(objective.split("_", 1)[1].removesuffix("_client_mean"),
                                  True)  # fmt: skip
    best = (max if higher else min)(settings, key=lambda d: d["mean"])
    summary.update(
        status="finished", seed=None, seeds=seeds, wall_s=results[0].wall_s,
        compile_s=results[0].compile_s, client_map=results[0].client_map,
        std="sample standard deviation over seeds (ddof 1)",
        objective={"name": objective, "value": best["mean"], "std": best["std"],
                   "per_seed": best["per_seed"], "sweep": best["sweep"]},
    )  # fmt: skip
    if sweep:
        summary["settings"] = settings


def _report(cfg, c: _Components, run_dir, results, summary, objective, seeds) -> None:
    """The end-of-run lines: the site table, the seed summary, privacy spent, the folder."""
    final = results[0].history[-1]
    which = "" if seeds is None else f" (seed {seeds[0]} of {len(seeds)})"
    print(f"\n{c.algorithm.name} on {c.data.name}: {c.data.num_clients} clients, round "
          f"{final['round']}{which}")  # fmt: skip
    rows = cfg.get("table_rows", 20)
    print(client_table(c.data, final, None if rows is None else int(rows)))
    if seeds is not None:
        for st in summary.get("settings") or [summary["objective"] | {"mean": None}]:
            mean = st["mean"] if st["mean"] is not None else st["value"]
            label = "" if not st.get("sweep") else f" {st['sweep']}"
            print(f"{objective}{label} over seeds {seeds}: {mean:.4f} +- {st['std']:.4f} "
                  f"({', '.join(f'{v:.4f}' for v in st['per_seed'])})")  # fmt: skip
    if "privacy" in final:
        p = final["privacy"]
        print(
            f"privacy ({p['level']} level, {p['relation']}, {p['accountant']}): "
            f"epsilon = {p['epsilon']:.3f} at delta = {p['delta']:g}"
        )
    r0 = results[0]
    print(f"run folder: {run_dir}  (wall {r0.wall_s:.1f} s, compile {r0.compile_s:.1f} s)")


def _initial_params(cfg: DictConfig, c: _Components):
    """The weights file ``init_from`` loaded into the model (``init_exclude``: leaves that
    keep the seed's initialisation, e.g. a new head), or ``None``: the seed's init."""
    if cfg.get("init_from") is None:
        return None
    k_init = jax.random.split(jax.random.key(int(cfg.seed)))[0]
    like = c.model.init(k_init, c.data.sample())
    return load_weights(str(cfg.init_from), like, exclude=list(cfg.get("init_exclude") or []))


def _simulate_args(cfg: DictConfig, c: _Components, seeds, sweep, state_dir, callbacks,
                   chunk) -> dict:  # fmt: skip
    """The arguments of :func:`fljax.simulate` for the composed config."""
    return dict(
        algorithm=c.algorithm, model=c.model, data=c.data, rounds=int(cfg.rounds),
        params=_initial_params(cfg, c), clients_per_round=int(cfg.clients_per_round),
        seed=int(cfg.seed), eval_every=int(cfg.eval_every),
        stragglers=float(cfg.get("stragglers", 0.0)),
        straggler_policy=str(cfg.get("straggler_policy", "drop")),
        eval_train=bool(cfg.get("eval_train", False)), compression=c.compression,
        downlink=c.downlink, privacy=c.privacy, secure_aggregation=c.secagg, system=c.system,
        checkpoint_dir=None if state_dir is None else str(state_dir),
        resume=bool(cfg.get("resume", False)), callbacks=callbacks,
        progress=bool(cfg.get("progress", False)) and distributed.is_primary(), seeds=seeds,
        sweep=sweep,
        client_chunk=chunk, client_map=str(cfg.get("client_map", "vmap")),
        aggregator=c.aggregator, attack=c.attack,
        reject_norm=None if cfg.get("reject_norm") is None else float(cfg.reject_norm),
    )  # fmt: skip


def _simulate(cfg: DictConfig, c: _Components, seeds, sweep, state_dir, callbacks, chunk):
    return simulate(**_simulate_args(cfg, c, seeds, sweep, state_dir, callbacks, chunk))


def check(cfg: DictConfig) -> str:
    """``dry_run=true``: builds the federation, model and components of ``cfg`` and makes
    every check :func:`fljax.simulate` makes before compiling (arguments, the requirement
    table, seeds, sweep); trains nothing and writes no results. Returns a one-line plan.

    Raises:
        ValueError: the first mistake, naming the field (as a real run would).
    """
    from fljax.engine import RunArgs, validate

    c = _components(cfg)
    seeds, sweep, runs = _seeds_and_sweep(cfg)
    chunk = cfg.get("client_chunk")
    chunk = None if chunk == "auto" else _client_chunk(cfg, c.algorithm, c.model, c.data)
    validate(RunArgs(**_simulate_args(cfg, c, seeds, sweep, None, [], chunk)))
    many = f", {len(runs)} runs in one program" if runs else ""
    return (f"dry run: {c.algorithm.name} on {c.data.name} ({c.data.num_clients} clients, "
            f"{int(cfg.clients_per_round)} per round), model {c.model.name}, "
            f"{int(cfg.rounds)} rounds{many}: the configuration is valid; nothing trained, "
            "no results written")  # fmt: skip


def _write_summary(run_dir: Path, summary: dict) -> None:
    write_atomic(run_dir / SUMMARY_FILE, json.dumps(to_jsonable(summary), indent=2))


def _open_folder(cfg: DictConfig, run_dir: Path, resume: bool) -> None:
    """Checks the (locked) run folder for the run asked for: resuming, a saved step and the
    same configuration but for the resumable keys; fresh, a folder without results (they are
    deleted only with ``overwrite=true``), then the configuration saved."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if resume:
        if not step_rounds(run_dir / RESUME_DIR):  # verified when the run restores it
            raise ValueError(f"resume=true but {run_dir} has no checkpoint ({RESUME_DIR}/)")
        _folder.check_config(run_dir, config)
        return
    present = _folder.results_in(run_dir)
    if present and not cfg.get("overwrite", False):
        raise _folder.RunFolderExistsError(
            f"{run_dir} holds the results of another run ({', '.join(present)}); "
            "resume=true continues it, overwrite=true deletes them and starts afresh, or "
            "choose another folder (hydra.run.dir=...)"
        )
    _folder.clear_results(run_dir)
    _folder.save_config(run_dir, config)
    _folder.snapshot_hydra(run_dir)


def run(cfg: DictConfig, run_dir: str | Path) -> SimulationResult:
    """Runs the composed config ``cfg`` and writes its run folder ``run_dir`` (locked for
    the run's life; see :mod:`fljax._folder` for what is refused and what is kept)."""
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = bool(cfg.get("resume", False))
    if not distributed.is_primary():
        return _follow(cfg, run_dir)
    try:
        with _folder.locked(run_dir):
            try:
                _open_folder(cfg, run_dir, resume)
            except Exception:
                distributed.broadcast(np.int32(0))  # the other processes stop too
                raise
            distributed.broadcast(np.int32(1))
            result = _run_in(cfg, run_dir, resume)
    except Exception as err:
        if not getattr(err, "fljax_ran", False):  # refused before it ran: the old record
            _folder.restore_hydra(run_dir)
        raise
    if resume:
        _folder.snapshot_hydra(run_dir)  # the extended run's record
    return result


def _follow(cfg: DictConfig, run_dir: Path) -> SimulationResult:
    """A process other than 0 of a multi-process run: the same simulation, in step with
    process 0 (which owns the run folder and writes every result); it joins the collective
    checkpoint saves and writes nothing of its own."""
    if not int(distributed.broadcast(np.int32(0))):  # process 0's verdict on the folder
        raise RunRefusedError(f"process 0 refused the run folder {run_dir} (its error says why)")
    seeds, sweep, runs = _seeds_and_sweep(cfg)
    c = _components(cfg)
    chunk = _client_chunk(cfg, c.algorithm, c.model, c.data)
    result = _simulate(cfg, c, seeds, sweep, _state_dir(cfg, run_dir), [], chunk)
    _save_params(cfg, run_dir, result, seeds, runs)  # orbax saves are collective
    return result


def _state_dir(cfg: DictConfig, run_dir: Path) -> Path | None:
    """Where the resume steps go: ``<run>/resume`` unless ``save_state=false`` (a resume
    always reads and extends them)."""
    keep = cfg.get("save_state", True) or cfg.get("resume", False)
    return run_dir / RESUME_DIR if keep else None


def _save_params(cfg: DictConfig, run_dir: Path, result, seeds, runs) -> None:
    """The final parameters (``checkpoint=true``): the run's, or each run folder's of a
    many-runs config. Every process of a multi-process run makes the same calls in the
    same order (orbax's saves are collective)."""
    if not cfg.get("checkpoint", True):
        return
    if seeds is None:
        save_params(run_dir, result.params)
        return
    for (x, v), res in zip(runs, result, strict=True):
        save_params(_run_folder(run_dir, x, v), res.params)


class RunRefusedError(RuntimeError):
    """Process 0 of a multi-process run refused the run folder."""


def _run_in(cfg: DictConfig, run_dir: Path, resume: bool) -> SimulationResult:
    """Builds the components, runs and writes the results of the locked, checked folder.
    A failure is recorded in ``summary.json``, except that of a resume that wrote nothing
    new (the run's files stay as they were)."""
    seeds, sweep, runs = _seeds_and_sweep(cfg)
    state_dir = _state_dir(cfg, run_dir)
    writer, loggers = _Writer(run_dir, runs, seeds, resume), []
    t0 = time.perf_counter()
    summary = {"status": "running", "seed": int(cfg.seed), "rounds": int(cfg.rounds)}
    try:
        c = _components(cfg)
        chunk = _client_chunk(cfg, c.algorithm, c.model, c.data)
        summary = _summary_start(cfg, c) | {"client_chunk": chunk}
        loggers = _loggers(cfg, run_dir) if seeds is None else []
        result = _simulate(cfg, c, seeds, sweep, state_dir, [writer, *loggers], chunk)
    except Exception as err:
        err.fljax_ran = writer.wrote or not resume
        if err.fljax_ran:
            summary.update(status="failed", error=f"{type(err).__name__}: {err}")
            summary["wall_s"] = time.perf_counter() - t0
            _write_summary(run_dir, summary)
        raise
    finally:
        for logger in loggers:
            logger.close()
    _write_results(cfg, c, run_dir, result, summary, seeds, sweep, runs)
    return result


def _write_results(cfg, c: _Components, run_dir, result, summary, seeds, sweep, runs) -> None:
    """The final parameters, ``summary.json`` (per run folder with many runs) and the report."""
    results = result if seeds is not None else [result]
    objective = cfg.get("objective") or f"test_{c.data.metrics[0]}"
    if objective not in results[0].history[-1]["metrics"]:
        raise ValueError(
            f"objective={objective!r} is not a final metric; choose from "
            f"{list(results[0].history[-1]['metrics'])}"
        )
    _save_params(cfg, run_dir, result, seeds, runs)
    if seeds is None:
        summary.update(_finished(cfg, c.data, result, objective))
    else:
        _many_runs_summary(cfg, c.data, run_dir, runs, results, summary, objective, seeds, sweep)
    _write_summary(run_dir, summary)
    _report(cfg, c, run_dir, results, summary, objective, seeds)


# What a user can fix from the command line (a bad value, a missing file, a busy or occupied
# folder, a run that diverged): one line on stderr instead of a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError,
               _folder.RunFolderBusyError, CorruptCheckpointError, RunRefusedError,
               distributed.ProcessLostError)  # fmt: skip


def user_error(err: BaseException) -> BaseException | None:
    """The error a user can fix behind ``err`` (Hydra's instantiation wrapper unwrapped), or
    ``None`` for anything else (a bug: its traceback is kept)."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err if isinstance(err, USER_ERRORS) else None


def join(cfg: DictConfig, run_dir: Path) -> Path:
    """Joins a multi-process run when ``fljax-launch`` set ``FLJAX_*`` or ``distributed=auto``
    asks JAX to detect the cluster; the run folder is then process 0's (every process must
    see the same path: a shared file system across hosts)."""
    how = cfg.get("distributed")
    if how not in (None, "auto"):
        raise ValueError(f"distributed={how!r} is not one of null, auto")
    if how is None and distributed.from_env() is None:
        return run_dir
    distributed.initialize()
    if not distributed.multiprocess():
        return run_dir
    encoded = np.zeros(4096, np.uint8)
    raw = str(run_dir.resolve()).encode()
    if len(raw) > len(encoded):
        raise ValueError(f"hydra.run.dir: the run folder's path is {len(raw)} bytes; a "
                         f"multi-process run shares it up to {len(encoded)}")  # fmt: skip
    encoded[: len(raw)] = np.frombuffer(raw, np.uint8)
    shared = bytes(distributed.broadcast(encoded)).rstrip(b"\0").decode()
    return Path(shared)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.get("dry_run", False):
            print(check(cfg))
            return None
        run_dir = join(cfg, run_dir)
        run(cfg, run_dir)
        if not distributed.is_primary():
            return None
    except Exception as err:
        cause = distributed.lost(err) or user_error(err)
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"fljax-run: error: {type(cause).__name__}: {cause}\n"
              "(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)  # fmt: skip
        if distributed.multiprocess():  # JAX's shutdown barrier would wait for the others
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        sys.exit(2)
    return json.loads((run_dir / SUMMARY_FILE).read_text())["objective"]["value"]


def main() -> None:
    """Console entry point (on CPU, one JAX device per core for the client axis)."""
    from fljax._devices import set_host_device_count

    set_host_device_count()  # before the first JAX computation; XLA_FLAGS set by you wins
    # Hydra logs at INFO: keep JAX's platform probing ("Unable to initialize backend 'tpu'")
    # and orbax's per-step lines out of the run's output.
    for name in ("jax", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["run", "main", "client_table", "OmegaConf"]
