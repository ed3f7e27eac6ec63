"""Results you can trust: a run killed at every filesystem operation of a save resumes to the
uninterrupted metrics or refuses clearly; a flipped byte in any saved file is detected; run
folders are locked, never overwritten without ``overwrite=true`` and never rewritten by a
refused or failed resume; results read back in any process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orbax.checkpoint as ocp
import pytest
from hydra import compose, initialize_config_dir

import fljax
from fljax import _folder, _io
from fljax.engine import _loop
from fljax.run import CONF_DIR, run

FAST = ["model=logistic", "rounds=4", "eval_every=1", "clients_per_round=4", "progress=false",
        "checkpoint=false"]  # fmt: skip


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="config", overrides=[*FAST, *overrides])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run: its metrics.jsonl lines and its folder."""
    folder = tmp_path_factory.mktemp("straight")
    run(_compose(), folder)
    return (folder / "metrics.jsonl").read_text(), folder


class Killed(BaseException):
    """A kill: not an Exception, so nothing in fljax handles it (no summary is written)."""


class KillSwitch:
    """Raises :class:`Killed` at the filesystem operation ``at = (name, k)`` (the k-th call
    of ``name``) that ``fljax/_io.py`` performs while saving the step of round ``round_``;
    records them all (``at=None``)."""

    OPS = ((os, "rename"), (os, "replace"), (os, "fsync"), (os, "open"), (shutil, "rmtree"),
           (Path, "mkdir"), (Path, "open"), (ocp.StandardCheckpointer, "save"))  # fmt: skip

    def __init__(self, monkeypatch, round_, at=None):
        self.round, self.at, self.count, self.active, self.names = round_, at, 0, False, []
        for owner, name in self.OPS:
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name), name))
        save = _loop.save_state

        def saving(directory, state, progress, *args, **kwargs):
            self.active = progress["round"] == self.round
            try:
                return save(directory, state, progress, *args, **kwargs)
            finally:
                self.active = False

        monkeypatch.setattr(_loop, "save_state", saving)

    def _wrap(self, fn, name):
        def op(*args, **kwargs):
            if self.active and sys._getframe(1).f_code.co_filename == _io.__file__:
                self.count += 1
                self.names.append(name)
                if (name, self.names.count(name)) == self.at:
                    raise Killed(f"killed at operation {self.count} ({name})")
            return fn(*args, **kwargs)

        return op


def test_a_kill_at_every_operation_of_a_save_resumes_exactly(tmp_path, straight, monkeypatch):
    """Kill the save of round 2 at each of its filesystem operations (each named call, by
    its rank among calls of that name: orbax's file count, hence the number of hash reads,
    can vary from save to save), then resume: every finished run's metrics.jsonl equals the
    uninterrupted run's, no round duplicated or lost."""
    lines, _ = straight
    with monkeypatch.context() as m:
        counter = KillSwitch(m, round_=2)
        run(_compose(), tmp_path / "count")
    points = [(n, counter.names[: i + 1].count(n)) for i, n in enumerate(counter.names)]
    killed = []
    for i, at in enumerate(points):
        folder = tmp_path / f"kill_{i}"
        with monkeypatch.context() as m:
            KillSwitch(m, round_=2, at=at)
            try:
                run(_compose(), folder)
            except Killed:
                killed.append(at)
            else:  # this save made fewer calls of that name: it ran to the end
                assert (folder / "metrics.jsonl").read_text() == lines
                continue
        assert not (folder / "summary.json").exists()
        run(_compose("resume=true"), folder)
        assert (folder / "metrics.jsonl").read_text() == lines, at
        assert json.loads((folder / "summary.json").read_text())["status"] == "finished"
    # mkdir, orbax's save, writes, fsyncs, the rename into place, the old step's removal
    kinds = {n for n, _ in killed}
    assert len(killed) >= 8 and {"mkdir", "save", "open", "fsync", "rename", "rmtree"} <= kinds


def _steps(folder: Path) -> list[Path]:
    return sorted((folder / "resume").glob("step_*"))


def test_a_flipped_byte_in_any_saved_file_is_detected(tmp_path, straight):
    """Every file of the newest step, one flipped byte each: resume warns naming the file,
    falls back to the previous step and finishes with the uninterrupted metrics."""
    lines, source = straight
    newest = _steps(source)[-1]
    files = sorted(p.relative_to(newest) for p in newest.rglob("*") if p.is_file())
    assert len(files) >= 3  # orbax's files, progress.json, manifest.json
    for i, name in enumerate(files):
        folder = tmp_path / f"flip_{i}"
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns("lock"))
        path = _steps(folder)[-1] / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.warns(UserWarning, match="falling back to step step_00000003"):
            run(_compose("resume=true"), folder)
        assert (folder / "metrics.jsonl").read_text() == lines, name


def test_every_step_corrupt_is_refused_naming_the_file(tmp_path, straight):
    _, source = straight
    folder = tmp_path / "corrupt"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("lock"))
    for step in _steps(folder):
        (step / "progress.json").write_text((step / "progress.json").read_text() + " ")
    before = (folder / "summary.json").read_text()
    with pytest.raises(_io.CorruptCheckpointError, match="progress.json"):
        run(_compose("resume=true"), folder)
    assert (folder / "summary.json").read_text() == before  # a failed resume changed nothing


def test_resume_with_another_configuration_is_refused_listing_keys(tmp_path, straight):
    _, source = straight
    folder = tmp_path / "other"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("lock"))
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"algorithm\.client_lr.*data_seed|data_seed.*seed"):
        run(_compose("resume=true", "seed=5", "data_seed=1", "algorithm.client_lr=0.5"), folder)
    with pytest.raises(ValueError, match=r"seed: 0 -> 5"):
        run(_compose("resume=true", "seed=5"), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    run(_compose("resume=true", "rounds=5", "progress=true"), folder)  # rounds may grow
    assert [e["round"] for e in _io.read_metrics(folder)] == [0, 1, 2, 3, 4, 5]


def test_simulate_refuses_the_checkpoint_of_another_simulation(tmp_path, breast_cancer_fed):
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=1, batch_size=16)
    args = dict(rounds=2, clients_per_round=4, checkpoint_dir=str(tmp_path))
    fljax.simulate(algo, model, breast_cancer_fed, **args)
    other = fljax.data.load("breast_cancer", num_clients=8, partition="dirichlet", alpha=0.5,
                            seed=1)  # fmt: skip
    with pytest.raises(ValueError, match="another simulation: data"):
        fljax.simulate(algo, model, other, resume=True, **args)
    faster = fljax.algorithms.rebuild(algo, client_lr=0.1)
    with pytest.raises(ValueError, match="another simulation: algorithm"):
        fljax.simulate(faster, model, breast_cancer_fed, resume=True, **args)
    with pytest.raises(ValueError, match="another simulation: seed"):
        fljax.simulate(algo, model, breast_cancer_fed, resume=True, seed=1, **args)


def test_a_fresh_run_never_replaces_results_without_overwrite(tmp_path, straight):
    lines, source = straight
    folder = tmp_path / "kept"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("lock"))
    summary = (folder / "summary.json").read_text()
    with pytest.raises(_folder.RunFolderExistsError, match="overwrite=true"):
        run(_compose("seed=3"), folder)
    assert (folder / "metrics.jsonl").read_text() == lines
    assert (folder / "summary.json").read_text() == summary
    run(_compose("seed=3", "overwrite=true"), folder)
    assert (folder / "metrics.jsonl").read_text() != lines
    assert len(_steps(folder)) == 2  # the old run's steps went with it; two kept


def test_a_second_run_in_a_locked_folder_fails_at_once_naming_the_holder(tmp_path):
    with _folder.locked(tmp_path):
        with pytest.raises(_folder.RunFolderBusyError, match=f"pid {os.getpid()} .* since"):
            run(_compose(), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_config_error_leaves_a_failed_summary(tmp_path):
    with pytest.raises(Exception, match="num_clients"):
        run(_compose("dataset.num_clients=-1"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "num_clients" in summary["error"]


def test_cli_refusals_keep_the_hydra_record(tmp_path):
    """Under Hydra, which rewrites ``.hydra/`` before fljax runs: a run refused by the lock
    of another process, and a resume refused for another seed, put the record back."""
    folder = tmp_path / "cli"
    base = [sys.executable, "-m", "fljax.run", *FAST, f"hydra.run.dir={folder}"]
    first = subprocess.run([*base, "rounds=2"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    config = (folder / ".hydra" / "config.yaml").read_text()
    metrics = (folder / "metrics.jsonl").read_text()
    with _folder.locked(folder):  # another process (this one) holds the folder
        busy = subprocess.run([*base, "rounds=3", "resume=true"], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert busy.returncode != 0 and f"in use by pid {os.getpid()}" in busy.stderr
    refused = subprocess.run([*base, "rounds=3", "resume=true", "seed=9"], capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert refused.returncode != 0 and "seed: 0 -> 9" in refused.stderr
    assert (folder / ".hydra" / "config.yaml").read_text() == config
    assert (folder / "metrics.jsonl").read_text() == metrics


def test_load_run_reads_a_two_device_run_in_a_one_device_process(tmp_path):
    """Saved by a process with 2 host devices, read by a fresh process with 1."""
    folder = tmp_path / "two"
    env2 = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    written = subprocess.run([sys.executable, "-m", "fljax.run", "model=logistic", "rounds=2",
                              "eval_every=1", "clients_per_round=4", "progress=false",
                              f"hydra.run.dir={folder}"], env=env2, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert written.returncode == 0, written.stderr[-2000:]
    read = (f"import fljax, jax, json; r = fljax.load_run({str(folder)!r}); "
            "print(json.dumps([len(jax.devices()), len(jax.tree.leaves(r.params)), "
            "r.summary['status']]))")  # fmt: skip
    env1 = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run([sys.executable, "-c", read], env=env1, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    devices, leaves, status = json.loads(out.stdout.strip().splitlines()[-1])
    assert devices == 1 and leaves and status == "finished"



def test_a_deleted_step_falls_back_and_a_deleted_state_is_refused(tmp_path, straight):
    """Deleting the newest step resumes from the previous one to the same metrics; deleting
    the whole saved state refuses the resume and leaves the finished run as it was."""
    lines, source = straight
    folder = tmp_path / "deleted"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("lock"))
    shutil.rmtree(_steps(folder)[-1])
    run(_compose("resume=true"), folder)
    assert (folder / "metrics.jsonl").read_text() == lines
    shutil.rmtree(folder / "resume")
    summary = (folder / "summary.json").read_text()
    with pytest.raises(ValueError, match="no checkpoint"):
        run(_compose("resume=true"), folder)
    assert (folder / "summary.json").read_text() == summary
    assert (folder / "metrics.jsonl").read_text() == lines


def test_the_chosen_client_chunk_is_in_the_summary(tmp_path):
    run(_compose("rounds=1", "client_chunk=2"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["client_chunk"] == 2 and summary["status"] == "finished"


def test_simulate_never_writes_over_a_saved_state(tmp_path, breast_cancer_fed):
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=1, batch_size=16)
    args = dict(rounds=2, clients_per_round=4, checkpoint_dir=str(tmp_path))
    fljax.simulate(algo, model, breast_cancer_fed, **args)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="holds the saved state of a run"):
        fljax.simulate(algo, model, breast_cancer_fed, seed=1, **args)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
