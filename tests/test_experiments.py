"""Experiment scripts run end to end on a small setting and print their JSON line."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run_script(args, tmp_path):
    out = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fedprox_synthetic_smoke(tmp_path):
    figures = _run_script(
        [
            "experiments/fedprox_synthetic.py",
            "--rounds",
            "2",
            "--eval-every",
            "1",
            "--datasets",
            "Synthetic(1,1)",
            "--stragglers",
            "0.9",
        ],
        tmp_path,
    )
    final = figures["final"]["Synthetic(1,1)"]["0.9"]
    assert set(final) == {"FedAvg", "FedProx (mu=0)", "FedProx (mu=1)"}
    assert (tmp_path / "fedprox_synthetic.png").exists()
    assert figures["claims"]["datasets"] == 1
