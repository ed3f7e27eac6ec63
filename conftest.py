"""Test set-up: 8 host CPU devices (before JAX is imported), strict rank promotion, float32."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the test workers and every process they start
# (fljax-run, the experiment scripts, notebook kernels): a program compiled once is loaded,
# not compiled again, by any of them.
_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".jax_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

ROOT = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real public files; read-only, never copied into the project)."""
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def breast_cancer_fed():
    import fljax

    return fljax.data.load("breast_cancer", num_clients=8, partition="dirichlet", alpha=0.5, seed=0)
