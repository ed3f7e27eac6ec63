"""The benchmark scripts run at tiny sizes and end with one JSON line (no timing asserts)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                         cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_throughput_reports_every_cohort_size():
    fig = _bench("benchmarks/throughput.py", "--clients", "2", "4", "--local-steps", "2",
                 "--batch", "4", "--repeats", "1", "--rounds-per-block", "1")  # fmt: skip
    assert [r["clients"] for r in fig["runs"]] == [2, 4]
    assert all(r["vmap_over_sequential"] > 0 and r["compile_vmap_s"] > 0 for r in fig["runs"])


def test_scale_reports_time_and_peak_memory():
    fig = _bench("benchmarks/scale.py", "--clients", "40", "--per-round", "4", "8",
                 "--rounds", "1", "--chunk", "3")  # fmt: skip
    runs = fig["runs"]
    assert [r["clients_per_round"] for r in runs] == [4, 8]
    assert all(r["peak_rss_gib"] > 0 and r["s_per_round"] > 0 for r in runs)
    assert runs[1]["clients_over_smallest"] == 2


def test_peers_without_the_bench_extra_times_fljax_and_names_what_is_missing():
    pytest.importorskip("jax")
    fig = _bench("benchmarks/peers.py", "--clients", "4", "--local-steps", "2", "--batch", "4",
                 "--repeats", "1", "--skip", "flower")  # fmt: skip
    assert fig["fljax_s_per_round"] > 0
    assert "torch_s_per_round" in fig or "torch" in fig["missing"]


def test_many_runs_counts_every_run():
    fig = _bench("benchmarks/many_runs.py", "--seeds", "2", "--rounds", "2", "--clients", "20",
                 "--lrs", "0.1", "0.2", "0.3")  # fmt: skip
    assert fig["runs_in_sweep"] == 6 and len(fig["final_auroc"]) == 2


def test_chunk_memory_reports_the_three_executions():
    fig = _bench("benchmarks/chunk_memory.py", "--clients", "8", "--chunk", "2", "--hidden", "16")
    assert fig["chunked_streaming_mib"] <= fig["chunked_stacked_mib"]
