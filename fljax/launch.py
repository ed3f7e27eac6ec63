"""``fljax-launch``: one ``fljax-run`` over N local processes on JAX's distributed runtime.

    fljax-launch --processes 2 -- dataset=synthetic_hospitals rounds=20 clients_per_round=8

Starts N ``fljax-run`` processes on this machine, each joining one run through
``jax.distributed`` (process 0 hosts the coordinator on a free port; on CPU each process gets
``--devices-per-process`` devices and the collectives are Gloo's). All of them share one run
folder (``hydra.run.dir``, chosen here unless given), which process 0 writes. Signals
(Ctrl-C, SIGTERM) are forwarded to every process; when one process fails the others are
stopped, and the exit code is the first failure's. On a cluster, use its own launcher
instead (``srun``, ``mpirun``) with ``fljax-run distributed=auto`` (``docs/multiprocess.md``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime

from fljax import distributed

GRACE_S = 10.0  # after one process fails, the others get this long to exit before SIGKILL


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fljax-launch", description=__doc__.split("\n\n")[0],
        usage="fljax-launch --processes N [options] -- <fljax-run overrides>",
    )  # fmt: skip
    p.add_argument("--processes", "-n", type=int, required=True, help="processes to start")
    p.add_argument("--devices-per-process", type=int, default=None,
                   help="CPU devices per process (default: this machine's cores / N)")
    p.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
    p.add_argument("--grace", type=float, default=GRACE_S,
                   help="seconds the others get to stop after one process fails")
    p.add_argument("overrides", nargs="*", help="fljax-run overrides (after --)")
    return p


def _xla_flags(devices: int) -> str:
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", "")).strip()  # fmt: skip
    return f"{flags} --xla_force_host_platform_device_count={devices}".strip()


def commands(n: int, overrides: list[str], run_dir: str | None = None) -> list[list[str]]:
    """The ``fljax-run`` command line of each of ``n`` processes: the same overrides and one
    run folder (``hydra.run.dir``); processes 1..n-1 write no Hydra files of their own."""
    if any(o in ("-m", "--multirun") for o in overrides):
        raise ValueError("fljax-launch runs ONE fljax-run over many processes; Hydra multirun "
                         "(-m) is not supported: vary seeds or float hyperparameters inside "
                         "the run with seeds=[...] / sweep={...}")  # fmt: skip
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        run_dir = run_dir or datetime.now().strftime("outputs/%Y-%m-%d/%H-%M-%S")
        overrides = [*overrides, f"hydra.run.dir={run_dir}"]
    base = [sys.executable, "-m", "fljax.run", *overrides]
    quiet = ["hydra.output_subdir=null", "hydra/job_logging=disabled",
             "hydra/hydra_logging=disabled"]  # fmt: skip
    return [base if i == 0 else [*base, *quiet] for i in range(n)]


def _stop(procs: list[subprocess.Popen], sig: int, grace: float) -> None:
    """Sends ``sig`` to every live process, then SIGKILL to those alive after ``grace``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def launch(n: int, overrides: list[str], devices_per_process: int | None = None,
           port: int | None = None, grace: float = GRACE_S) -> int:  # fmt: skip
    """Runs ``fljax-run overrides`` as ``n`` processes of one run; the exit code (0, or the
    first failing process's)."""
    if n < 1:
        raise ValueError(f"--processes={n} must be >= 1")
    devices = devices_per_process or max(1, (os.cpu_count() or 1) // n)
    if devices < 1:
        raise ValueError(f"--devices-per-process={devices} must be >= 1")
    address = f"127.0.0.1:{port or free_port()}"
    procs = []
    for i, cmd in enumerate(commands(n, overrides)):
        env = os.environ | {distributed.ENV_COORDINATOR: address,
                            distributed.ENV_NUM_PROCESSES: str(n),
                            distributed.ENV_PROCESS_ID: str(i), "XLA_FLAGS": _xla_flags(devices)}
        procs.append(subprocess.Popen(cmd, env=env))  # fmt: skip
    forwarded = []

    def forward(sig, _frame):
        forwarded.append(sig)
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _supervise(procs, grace, forwarded)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _supervise(procs, grace: float, forwarded: list) -> int:
    """Waits for every process; the first failure stops the rest. The exit code."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i, code = failed[0]
            if not forwarded:
                print(f"fljax-launch: process {i} exited with code {code}; stopping the "
                      f"other {sum(c is None for c in codes)}", file=sys.stderr)  # fmt: skip
            _stop(procs, signal.SIGTERM, grace)
            return code if code > 0 else 128 - code
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = _parser().parse_args(argv)
    try:
        code = launch(args.processes, list(args.overrides), args.devices_per_process,
                      args.port, args.grace)  # fmt: skip
    except ValueError as err:
        print(f"fljax-launch: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()


__all__ = ["launch", "commands", "free_port", "main"]
