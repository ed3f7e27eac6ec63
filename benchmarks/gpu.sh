#!/usr/bin/env bash
# Runs the scale benchmarks (throughput, scale, peers, imaging, many_runs) on a GPU machine and writes one JSON of their results.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          (default: $OUT, else ./gpu_results)
#
# Needs a python3 with jax[cuda], flax, optax, chex, orbax-checkpoint and scikit-learn (the
# GPU image has them). fljax is used from this checkout (PYTHONPATH); a package the image
# lacks (dp-accounting) is installed offline from .gpu_wheels/ if that folder is there:
#   pip download --no-deps dp-accounting -d .gpu_wheels     (on a machine with a network)
# Flower is not on the GPU image; peers.py and imaging.py then time fljax against PyTorch only
# (PyTorch on the GPU: benchmarks/peers.py torch_device).
# Each benchmark's last output line is its JSON; all of them go into gpu_results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_results}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if [ -d .gpu_wheels ]; then
  "$py" -m pip install --quiet --no-index --no-deps .gpu_wheels/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" -c "import jax; b = jax.default_backend(); print('backend', b, jax.devices()); assert b == 'gpu', b"

run() {  # name, command...: log to $out/<name>.log, keep the last line (the JSON)
  local name=$1; shift
  "$py" "$@" 2>&1 | tee "$out/$name.log"
  tail -n 1 "$out/$name.log" > "$out/$name.json"
}
run throughput benchmarks/throughput.py --clients 10 100 1000 10000 --repeats 5
run scale benchmarks/scale.py --clients 10000 --per-round 100 1000 10000 --rounds 5
run peers benchmarks/peers.py --clients 100 --skip flower
run imaging benchmarks/imaging.py --workloads cnn resnet8 --clients 8 32 100 --repeats 3 --skip flower
run many_runs benchmarks/many_runs.py --seeds 5 --rounds 50
run chunk_memory benchmarks/chunk_memory.py --clients 4096 --chunk 512
"$py" - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
results = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
           if p.stem != "gpu_results"}
(out / "gpu_results.json").write_text(json.dumps(results, indent=2))
print(json.dumps(results))
PY
