"""Test set-up: 8 host CPU devices (before JAX is imported), strict rank promotion, float32."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# A persistent compilation cache for the two test workers (a warm rerun loads its programs).
# Not passed to the processes the tests start (fljax-run, scripts, notebook kernels): their
# programs are rarely compiled twice, and writing each to the cache cost ~6% of a cold
# fljax-run multirun (measured).
_CACHE = Path(__file__).resolve().parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

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
