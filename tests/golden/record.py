"""Records the golden histories: ``python tests/golden/record.py [name ...]``.

Run on the engine whose results are to be frozen, with the test suite's device set-up
(8 host CPU devices), so that ``tests/test_golden.py`` compares like with like. Refuses to
overwrite an existing golden file unless ``--overwrite`` is given.
"""

import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import json  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from tests.golden import cases  # noqa: E402


def main(argv: list[str]) -> None:
    overwrite = "--overwrite" in argv
    names = [a for a in argv if not a.startswith("--")] or list(cases.CASES)
    for name in names:
        target = cases.path(name)
        if target.exists() and not overwrite:
            print(f"{name}: exists, kept (--overwrite to replace)")
            continue
        out = cases.run(name)
        target.write_text(json.dumps(out, sort_keys=True) + "\n")
        print(f"{name}: {len(out)} run(s), {len(out[0]['history'])} evaluations")


if __name__ == "__main__":
    main(sys.argv[1:])
