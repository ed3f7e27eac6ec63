"""The benchmark scripts run at tiny sizes and end with one JSON line (no timing asserts).

many_runs.py and chunk_memory.py are not run here: what they measure is tested directly in
test_scale.py (vmapped seeds / sweeps equal separate runs; streaming leaves no delta stack).
"""

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args):
    """Runs a benchmark script in a fresh process; its last line is its JSON."""
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                         cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bench_here(script, *args, capsys=None):
    """Runs a benchmark's ``main(argv)`` in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fig = module.main(list(args))
    if capsys is not None:  # the last printed line is the same JSON
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(
            json.dumps(fig)
        )
    return fig


def test_throughput_reports_every_cohort_size(capsys):
    fig = _bench_here("benchmarks/throughput.py", "--clients", "2", "4", "--local-steps", "2",
                      "--batch", "4", "--repeats", "1", "--rounds-per-block", "1",
                      capsys=capsys)  # fmt: skip
    assert [r["clients"] for r in fig["runs"]] == [2, 4]
    assert all(r["vmap_over_sequential"] > 0 and r["compile_vmap_s"] > 0 for r in fig["runs"])


def test_scale_reports_time_and_peak_memory():
    fig = _bench("benchmarks/scale.py", "--clients", "40", "--per-round", "8", "--rounds", "1",
                 "--chunk", "3")  # fmt: skip
    (run,) = fig["runs"]
    assert run["clients_per_round"] == 8 and run["client_chunk"] == 3
    assert run["peak_rss_gib"] > 0 and run["s_per_round"] > 0


def test_peers_without_the_bench_extra_times_fljax_and_names_what_is_missing():
    pytest.importorskip("jax")
    fig = _bench_here("benchmarks/peers.py", "--clients", "4", "--local-steps", "2", "--batch",
                      "4", "--repeats", "1", "--skip", "flower")  # fmt: skip
    assert fig["fljax_s_per_round"] > 0
    assert "torch_s_per_round" in fig or "torch" in fig["missing"]


def test_imaging_reports_each_strategy_against_the_loop():
    spec = importlib.util.spec_from_file_location("imaging", ROOT / "benchmarks/imaging.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(local_steps=1, batch=4, repeats=1, strategies=["sequential"],
                              fljax_only=False, xla_max_clients=0,
                              skip=["torch_loop", "torch_central", "flower"])  # fmt: skip
    out = module.measure("cnn", 2, args)
    assert out["sequential_examples_per_s"] > 0 and out["sequential_over_loop"] > 0
    assert "vmap_examples_per_s" not in out  # only the strategies asked for
    assert out["auto_choice"] in ("vmap", "device_vmap", "sequential")
    assert out["loop_examples_per_s"] == max(out["loop_dot_examples_per_s"],
                                             out["loop_xla_examples_per_s"])  # fmt: skip
    assert out["central_examples_per_s"] > 0 and out["missing"] == {}


def test_robust_reports_each_rule_against_fedavg(capsys):
    fig = _bench_here("benchmarks/robust.py", "--clients", "12", "--rounds", "1", "--repeats",
                      "1", "--rules", "fedavg,median,bulyan", capsys=capsys)  # fmt: skip
    assert fig["rules"]["fedavg"]["vs_fedavg"] == 1.0
    assert fig["rules"]["bulyan"]["round_s"] > 0


def test_multiprocess_reports_each_process_count():
    """1 and 2 processes of one run: each process of 2 holds its half of the federation."""
    fig = _bench("benchmarks/multiprocess.py", "--processes", "1", "2", "--workloads",
                 "hospitals", "--hospitals", "40", "--per-round", "8", "--rounds", "1")  # fmt: skip
    two = fig["runs"]["hospitals_2p"]
    assert [p["hosted"] for p in two] == [[0, 20], [20, 40]]
    assert fig["hospitals_2p_over_1p"]["federation_bytes"] == pytest.approx(0.5, rel=0.05)
    assert all(p["s_per_round"] > 0 for p in two)


def test_valuation_benchmark_reports_the_per_federation_ratio(shared_data):
    fig = _bench("benchmarks/valuation.py", "--seeds", "1", "--rounds", "1", "--sample", "2",
                 "--data-dir", str(shared_data / "heart_disease"))  # fmt: skip
    assert fig["federations"] == 15 and fig["programs"] == 1 and fig["one_by_one_timed"] == 2
    assert fig["per_federation_ratio"] > 0 and len(fig["shapley_mean"]) == 4
