"""FLamby's initial weights for Fed-Heart-Disease and Fed-TCGA-BRCA, seeds 42-46, from PyTorch.

FLamby's benchmark (``flamby/benchmarks/fed_benchmark.py`` at the commits that produced its
published results: c0cc1b4 for TCGA-BRCA, a422b61 for heart disease) calls ``set_seed(seed)``
(``torch.manual_seed``, ``np.random.seed``, ``random.seed``) first, and the first thing after it
that draws from PyTorch's generator is ``global_init = Baseline()``: parsing the config, the
dataset handles and the round count draw nothing, and the data loaders are built after the
model (their shuffling draws only when iterated). Every strategy and baseline then starts from
``copy.deepcopy(global_init)``. The two models are one ``nn.Linear`` each: heart disease
``Linear(13, 1)`` under a sigmoid, TCGA-BRCA ``Linear(39, 1)`` (a linear Cox model); an
``nn.Linear`` draws its weight ``[out, in]`` then its bias ``[out]`` (both uniform on
+-1/sqrt(in)), so the weights are ``torch.manual_seed(seed)`` then ``nn.Linear(in, 1)``.

Writes ``experiments/flamby_init.npz``: ``{heart,tcga}_{seed}_weight`` (``[1, in]``, PyTorch
layout) and ``_bias`` (``[1]``), and ``torch_version``. ``experiments/flamby.py --init flamby``
(the default) loads them.

    pip install torch  # the bench extra; any CPU build
    python experiments/flamby_init.py [--out experiments/flamby_init.npz] [--check]

``--check`` regenerates and compares with the stored file (exit 1 on any difference).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SEEDS = (42, 43, 44, 45, 46)
IN_FEATURES = {"heart": 13, "tcga": 39}
DEFAULT = Path(__file__).resolve().parent / "flamby_init.npz"


def generate() -> dict[str, np.ndarray]:
    """``{dataset}_{seed}_weight`` / ``_bias`` for every dataset and seed, and the version."""
    import torch

    out: dict[str, np.ndarray] = {"torch_version": np.array(torch.__version__)}
    for name, d_in in IN_FEATURES.items():
        for seed in SEEDS:
            torch.manual_seed(seed)
            layer = torch.nn.Linear(d_in, 1)
            out[f"{name}_{seed}_weight"] = layer.weight.detach().numpy().copy()
            out[f"{name}_{seed}_bias"] = layer.bias.detach().numpy().copy()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT)
    p.add_argument("--check", action="store_true", help="compare with the stored file")
    args = p.parse_args(argv)
    arrays = generate()
    if args.check:
        stored = np.load(args.out)
        diff = [
            k for k in arrays if k != "torch_version" and not np.array_equal(arrays[k], stored[k])
        ]
        print(
            f"torch {arrays['torch_version']} vs stored {stored['torch_version']}: "
            f"{'identical' if not diff else 'DIFFERENT: ' + ', '.join(diff)}"
        )
        return 1 if diff else 0
    np.savez(args.out, **arrays)
    print(f"wrote {args.out} (torch {arrays['torch_version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
