"""The server's record of a deployed run: the same history entries as the simulation (per-site
test metrics and their summaries, participation, bytes, privacy spent) written as they come
to the same run folder as ``fljax-run`` (``metrics.jsonl``, ``summary.json``, ``checkpoint/``,
``.fljax/config.json``), plus which sites dropped out of which round."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fljax import _folder
from fljax._io import SUMMARY_FILE, MetricsWriter, save_params, to_jsonable, write_atomic
from fljax.engine._history import RunLog, component_records, json_list
from fljax.engine._setup import tree_bytes
from fljax.metrics import HIGHER_IS_BETTER, summarize


def describe(dep) -> dict:
    """The deployment as JSON (saved in the run folder and its summary)."""
    def named(c):
        return None if c is None else {"name": c.name, **getattr(c, "hparams", {})}

    return {
        "deployment": "flower", "dataset": dep.task.name, "num_clients": dep.num_sites,
        "model": dep.model.name, "algorithm": dep.algorithm.name,
        "hparams": dep.algorithm.hparams, "compression": named(dep.compression),
        "privacy": named(dep.privacy), "aggregator": named(dep.aggregator),
        "secagg": None if dep.secagg is None else {"name": "flower_secagg_plus",
                                                   **vars(dep.secagg)},
        "seed": int(dep.seed), "rounds": int(dep.rounds),
        "clients_per_round": dep.cohort, "eval_every": int(dep.eval_every),
    }  # fmt: skip


class RunRecord:
    """History entries and the run folder of one deployed run."""

    def __init__(self, dep, fed, prep, state):
        self.dep, self.fed = dep, fed
        self.log = RunLog(int(dep.seed), fed.num_clients)
        self.extras = component_records(None, None, None, None, "federated", None, dep.cohort,
                                        prep.dp_plan)  # fmt: skip
        self.ratio = None
        if dep.compression is not None:
            self.ratio = 8 * tree_bytes(prep.params) / dep.compression.bits(prep.params)
        self.up = self.down = 0
        self.losses: list[float] = []
        self.dropped: dict[int, list[int]] = {}  # round -> sites that did not reply
        self.writer = None
        self.pending: dict = {}
        self.t0 = time.perf_counter()

    def drop(self, r: int, site: int) -> None:
        self.dropped.setdefault(r + 1, []).append(int(site))
        name = self.fed.client_names[site]
        print(f"round {r + 1}: site {site} ({name}) did not reply; dropped from the round "
              "(straggler_policy='drop')", flush=True)  # fmt: skip

    def absorb(self, metrics) -> None:
        """A round's :class:`RoundMetrics`: participation and the reported local loss."""
        ids, contributed = np.asarray(metrics.client_ids), np.asarray(metrics.contributed)
        np.add.at(self.log.participation, ids[contributed], 1)
        self.log.selected.append(ids)
        self.log.contributed.append(contributed)
        self.log.num_steps.append(np.asarray(metrics.num_steps))
        self.losses.append(float(metrics.train_loss))

    def _scores(self, scores: dict) -> tuple[dict, dict]:
        counts = self.fed.test.num_examples
        names = ["loss", *self.fed.metrics]
        metrics, client_metrics = {}, {}
        for name in names:
            values = np.array([scores.get(s, {}).get(name, np.nan)
                               for s in range(self.fed.num_clients)], np.float64)  # fmt: skip
            client_metrics[f"test_{name}"] = json_list(values)
            for suffix, v in summarize(values, counts, HIGHER_IS_BETTER[name]).items():
                metrics[f"test_{name}{suffix}"] = v
        return metrics, client_metrics

    def snapshot(self, round_idx: int, state) -> None:
        """The history entry after ``round_idx`` rounds but for the sites' test metrics,
        which arrive with the next wave of messages (:meth:`complete`)."""
        entry = {"round": round_idx, "metrics": {},
                 "local_loss": float(np.mean(self.losses)) if self.losses else None,
                 "participation": self.log.participation.tolist(),
                 "bytes_up": int(self.up), "bytes_down": int(self.down),
                 "dropped": {str(r): s for r, s in self.dropped.items() if r <= round_idx}}
        self.losses = []
        if self.ratio is not None:
            entry["compression_ratio"] = self.ratio
        for extra in self.extras:
            extra(entry, state, self.log, round_idx)
        self.pending = entry

    def complete(self, scores: dict) -> dict:
        """The pending entry with the sites' test ``scores`` ``{site: {metric: value}}``
        (sites that did not report are undefined and listed), appended and written."""
        rest = self.pending
        metrics, client_metrics = self._scores(scores)
        metrics["local_loss"] = rest.pop("local_loss")
        client_metrics["num_test_examples"] = np.asarray(self.fed.test.num_examples).tolist()
        client_metrics["participation"] = rest.pop("participation")
        entry = {"round": rest.pop("round"), "metrics": metrics,
                 "client_metrics": client_metrics, **{k: v for k, v in rest.items()
                                                      if k != "metrics"},
                 "unreported_sites": sorted(set(range(self.fed.num_clients)) - set(scores))}
        self.log.history.append(entry)
        if self.writer is not None:
            self.writer(entry)
        return entry

    @contextlib.contextmanager
    def folder(self) -> Iterator[None]:
        """The run folder for the run's life (locked; results never replaced without
        ``overwrite``); a failure is recorded in ``summary.json``."""
        if self.dep.run_dir is None:
            yield
            return
        run_dir = Path(self.dep.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with _folder.locked(run_dir):
            present = _folder.results_in(run_dir)
            if present and not self.dep.overwrite:
                raise _folder.RunFolderExistsError(
                    f"{run_dir} holds the results of another run ({', '.join(present)}); "
                    "overwrite=true deletes them, or choose another run_dir")  # fmt: skip
            _folder.clear_results(run_dir)
            _folder.save_config(run_dir, describe(self.dep))
            self.writer = MetricsWriter(run_dir)
            self._summary({"status": "running", **describe(self.dep)})
            try:
                yield
            except Exception as err:
                self._summary({"status": "failed", "error": f"{type(err).__name__}: {err}",
                               **describe(self.dep)})  # fmt: skip
                raise

    def _summary(self, summary: dict) -> None:
        if self.dep.run_dir is not None:
            path = Path(self.dep.run_dir) / SUMMARY_FILE
            write_atomic(path, json.dumps(to_jsonable(summary), indent=2))

    def finish(self, state) -> dict:
        """The final parameters and ``summary.json``; prints the per-site table."""
        from fljax.run import client_table

        final = self.log.history[-1]
        metric = f"test_{self.fed.metrics[0]}"
        summary = {"status": "finished", **describe(self.dep), "final_round": final["round"],
                   "metrics": final["metrics"], "client_metrics": final["client_metrics"],
                   "client_names": list(self.fed.client_names), "wall_s":
                   time.perf_counter() - self.t0, "bytes_up": final["bytes_up"],
                   "bytes_down": final["bytes_down"], "dropped": final["dropped"],
                   "objective": {"name": metric, "value": final["metrics"][metric]}}  # fmt: skip
        if "privacy" in final:
            summary["epsilon"], summary["privacy_spent"] = final["epsilon"], final["privacy"]
        if self.dep.run_dir is not None:
            save_params(self.dep.run_dir, state.params)
        self._summary(summary)
        print(client_table(self.fed, final), flush=True)
        return summary
