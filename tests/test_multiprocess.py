"""Multi-process runs on JAX's distributed runtime (``fljax.distributed``, ``fljax-launch``):
2 processes on localhost (1 CPU device each, Gloo collectives) against one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fljax
from fljax import distributed
from fljax.launch import commands, free_port

HERE = Path(__file__).resolve().parent


def _env(i: int, n: int, port: int) -> dict:
    return os.environ | {distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
                         distributed.ENV_NUM_PROCESSES: str(n),
                         distributed.ENV_PROCESS_ID: str(i),
                         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}  # fmt: skip


def _start(n: int, cmd: list[str], **popen) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(cmd, env=_env(i, n, port), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, **popen)
            for i in range(n)]  # fmt: skip


def _finish(procs, timeout=600) -> list[str]:
    outs = [p.communicate(timeout=timeout) for p in procs]
    for i, (p, (_, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i}: {err[-3000:]}"
    return [err for _, err in outs]


def _close(got, want, where: str):
    """``got`` (JSON) equals ``want`` to 1e-6, numbers anywhere in nested lists / dicts."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            _close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, float | int | np.floating | np.integer) and want is not None:
        assert got is not None and np.isclose(got, want, rtol=1e-6, atol=1e-6), \
            f"{where}: {got} != {want}"  # fmt: skip
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _two_processes(tmp_path):
    """Every case of ``tests/mp_worker.py`` run by 2 processes: each process's results."""
    out = tmp_path / "got.json"
    _finish(_start(2, [sys.executable, str(HERE / "mp_worker.py"), str(out)]))
    return [json.loads(Path(f"{out}.{i}").read_text()) for i in range(2)]


def test_two_processes_match_one_process(tmp_path):
    """The same seed gives the single-process histories, final parameters and per-client
    state to 1e-6, in both processes, for FedAvg, SCAFFOLD, client-level DP, SecAgg and
    a ``seeds=`` program.
    Process p holds clients [5p, 5p + 5) of 10 (half the federation's bytes, and half of
    SCAFFOLD's control variates), and the digest of the federation gathered from both
    equals one process's; SCAFFOLD saved by both processes (each its shards) and resumed
    equals an uninterrupted run. (One test: the 2-process run is shared by every check.)"""
    sys.path.insert(0, str(HERE))
    import mp_worker

    from fljax.engine._identity import data_digest

    got = _two_processes(tmp_path)
    data = fljax.data.load("synthetic_hospitals", **mp_worker.DATA)
    model = fljax.models.get("logistic", num_classes=2)
    for case, kw in mp_worker.cases().items():
        want = json.loads(json.dumps(mp_worker.outcome(
            fljax.simulate(model=model, data=data, **mp_worker.RUN, **kw))))  # fmt: skip
        for i, one in enumerate(got):
            _close(one[case], want, f"process {i}: {case}")
    resumed = json.loads(json.dumps(mp_worker.outcome(fljax.simulate(
        model=model, data=data, **(mp_worker.RUN | {"rounds": 5}),
        **mp_worker.cases()["scaffold"]))))  # fmt: skip
    for i, one in enumerate(got):  # 3 rounds saved, 2 more after a resume: 5 uninterrupted
        _close(one["scaffold_resumed"], resumed, f"process {i}: SCAFFOLD resumed")
        # each process wrote its shards of the control variates (orbax, multi-process)
        assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(one["shard_writers"])
    total = sum(np.asarray(a).nbytes for split in (data.train, data.test) for a in split[:2])
    assert [p["hosted"] for p in got] == [[0, 5], [5, 10]]
    for p in got:
        assert p["scaffold_rows_held"] == 5
        assert p["federation_bytes"] == total // 2
        assert p["digest"] == data_digest(data)


RUN_ARGS = ["dataset=synthetic_hospitals", "dataset.num_clients=10", "dataset.num_features=4",
            "dataset.mean_size=16", "model=logistic", "rounds=12", "eval_every=1",
            "clients_per_round=4", "progress=false", "algorithm.client_lr=0.1"]  # fmt: skip


def _entries(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_a_killed_process_stops_the_run_and_both_resume_it(tmp_path):
    """SIGKILL of process 1 mid-run: process 0 exits within 60 s naming the lost process;
    ``fljax-launch ... resume=true`` finishes the run, and its history equals a
    single-process run of the same config."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "fljax.run", *RUN_ARGS, f"hydra.run.dir={run_dir}"]
    procs = _start(2, cmd)
    deadline = time.monotonic() + 300
    while len(_entries(run_dir)) < 3 and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = procs[0].communicate(timeout=60)
    assert time.monotonic() - killed_at < 60
    assert procs[0].returncode != 0
    assert "ProcessLostError" in err and "another process" in err, err[-3000:]
    assert len(_entries(run_dir)) < 13  # it stopped mid-run
    procs[1].communicate()

    launched = subprocess.run(
        [sys.executable, "-m", "fljax.launch", "--processes", "2", "--devices-per-process", "1",
         "--", *RUN_ARGS, f"hydra.run.dir={run_dir}", "resume=true"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    one = tmp_path / "one"
    single = subprocess.run([sys.executable, "-m", "fljax.run", *RUN_ARGS,
                             f"hydra.run.dir={one}"], capture_output=True, text=True,
                            env=os.environ | {"XLA_FLAGS":
                                              "--xla_force_host_platform_device_count=2"},
                            timeout=600)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    got, want = _entries(run_dir), _entries(one)
    assert [e["round"] for e in got] == list(range(13))
    for g, w in zip(got, want, strict=True):
        _close(g["metrics"], w["metrics"], f"round {w['round']}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"


def test_bad_process_id_and_address_fail_at_once():
    with pytest.raises(ValueError, match="process_id=2 must lie in"):
        distributed.initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="coordinator_address='localhost'"):
        distributed.initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match="num_processes=0"):
        distributed.initialize("127.0.0.1:1234", 0, 0)


def test_an_unreachable_coordinator_fails_naming_it():
    """Process 1 of 2 waiting for a coordinator nobody runs: a clear error after the
    timeout, naming the address."""
    address = f"127.0.0.1:{free_port()}"
    code = ("from fljax import distributed\n"
            f"distributed.initialize({address!r}, 2, 1, timeout_s=3)")  # fmt: skip
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode != 0
    assert f"coordinator_address={address!r}" in out.stderr, out.stderr[-2000:]
    assert time.monotonic() - t0 < 60


def test_launch_stops_the_others_when_one_fails():
    """``fljax-launch``'s supervisor: the first failure's code, the rest stopped at once."""
    from fljax.launch import _supervise

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    failing = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    t0 = time.monotonic()
    assert _supervise([sleeper, failing], grace=5.0, forwarded=[]) == 3
    assert sleeper.poll() is not None and time.monotonic() - t0 < 30


def test_launch_commands():
    """One run folder for every process; processes 1.. write no Hydra files; no multirun."""
    cmds = commands(3, ["rounds=2"], run_dir="outputs/x")
    assert all("hydra.run.dir=outputs/x" in c for c in cmds)
    assert "hydra.output_subdir=null" not in cmds[0]
    assert all("hydra.output_subdir=null" in c for c in cmds[1:])
    assert commands(2, ["hydra.run.dir=/r"])[0].count("hydra.run.dir=/r") == 1
    with pytest.raises(ValueError, match="multirun"):
        commands(2, ["-m", "seed=0,1"])


def _same_split(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_hosted_block_of_the_federation(monkeypatch):
    """``hosting(rows)``: those clients' rows, every client's counts and names; the hosted
    ``synthetic_hospitals`` (drawing only its sites) and ``from_client_arrays(hosted=...)``
    give exactly that block; what needs every client refuses it, naming itself."""
    import fljax.data._hospitals as hospitals

    kw = dict(num_clients=9, num_features=3, mean_size=12, seed=4)
    whole = fljax.data.load("synthetic_hospitals", **kw)
    part = whole.hosting(range(3, 7))
    assert (part.num_clients, part.hosted, part.train.x.shape[0]) == (9, (3, 7), 4)
    np.testing.assert_array_equal(part.num_examples, whole.num_examples)
    assert part.client_names == whole.client_names
    assert part.sample().shape == whole.sample().shape and not part.sample().any()
    _same_split(part.train, (whole.train.x[3:7], whole.train.y[3:7], whole.num_examples))

    monkeypatch.setattr(hospitals, "multiprocess", lambda: True)
    monkeypatch.setattr(hospitals, "hosted_rows", lambda c: range(3, 7))
    drawn = hospitals.synthetic_hospitals(**kw)
    assert drawn.hosted == (3, 7)
    for a, b in ((drawn.train, part.train), (drawn.test, part.test)):
        _same_split(a, b)

    xs = [np.asarray(whole.train.x[c, : whole.num_examples[c]]) for c in range(3, 7)]
    ys = [np.asarray(whole.train.y[c, : whole.num_examples[c]]) for c in range(3, 7)]
    n_test = np.asarray(whole.test.num_examples)
    tx = [np.asarray(whole.test.x[c, : n_test[c]]) for c in range(3, 7)]
    ty = [np.asarray(whole.test.y[c, : n_test[c]]) for c in range(3, 7)]
    built = fljax.data.from_client_arrays(
        xs, ys, tx, ty, num_classes=2,
        hosted=(range(3, 7), whole.num_examples, n_test, (3,), ()),
    )  # fmt: skip
    _same_split(built.train, part.train)
    _same_split(built.test, part.test)
    for what, call in (("describe", fljax.data.describe),
                       ("drop_empty_clients", fljax.data.drop_empty_clients)):  # fmt: skip
        with pytest.raises(ValueError, match=f"{what} needs every client's data"):
            call(part)
    with pytest.raises(ValueError, match="hosted: client 3 has"):
        fljax.data.from_client_arrays(xs, ys, tx, ty, num_classes=2, hosted=(
            range(3, 7), whole.num_examples + 1, n_test, (3,), ()))  # fmt: skip


def test_fljax_run_distributed_key_is_checked(tmp_path):
    """``distributed`` is null or auto; anything else is refused naming the key; null without
    ``FLJAX_*`` stays a single-process run in its own folder."""
    from omegaconf import OmegaConf

    from fljax.run import join

    with pytest.raises(ValueError, match="distributed='yes' is not one of null, auto"):
        join(OmegaConf.create({"distributed": "yes"}), tmp_path)
    assert join(OmegaConf.create({"distributed": None}), tmp_path) == tmp_path
