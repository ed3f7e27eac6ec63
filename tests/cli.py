"""Running ``python -m fljax.run`` in a subprocess, as a user would from the shell."""

import subprocess
import sys


def fljax_run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs ``fljax-run args...`` and fails the test, showing stderr, unless it succeeds."""
    out = subprocess.run(
        [sys.executable, "-m", "fljax.run", *args], capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out
