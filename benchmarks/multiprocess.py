"""Multi-process runs: 1, 2 (and 4 where the cores allow) processes on localhost, one run.

Each configuration starts its processes the way ``fljax-launch`` does (``FLJAX_*``
variables, Gloo collectives, the machine's cores split evenly: every configuration has the
same number of CPU devices in all), and every process measures:
  s_per_round        the compiled block of ``--rounds`` rounds, best of 3 after a warm-up
                     (selection, gathering the cohort, local training, aggregation);
  peak_rss_gib       the process's peak resident memory (``ru_maxrss``), loading included;
  federation_mib     the bytes of the federation the process holds on the host (its
                     hosted clients' padded train/test arrays) and on its devices
                     (``device_mib``: the addressable shards of the training split).
Workloads:
  hospitals  ``synthetic_hospitals`` with ``--hospitals`` sites (10 features, 50 patients on
             average), MLP 10-64-64-2, FedAvg 1 local epoch of batch 16, ``--per-round``
             clients per round (each process generates only its own sites);
  cnn        ``--cnn-clients`` sites of ``--cnn-images`` random 28x28x1 images (labels from
             a fixed linear filter, each site from its own seed), the CNN of
             ``benchmarks/imaging.py`` (16-32 filters, dense 64), FedAvg 5 local steps of
             batch 16, ``--cnn-per-round`` clients per round.
The last line is one JSON object; ``<workload>_<n>p_over_1p`` ratios compare each process
count with one process (time per round, per-process federation bytes, peak RSS).

    python benchmarks/multiprocess.py [--processes 1 2 4 --workloads hospitals cnn]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CNN_SHAPE = (28, 28, 1)


def _hospitals(args):
    import fljax

    data = fljax.data.load("synthetic_hospitals", num_clients=args.hospitals, num_features=10,
                           mean_size=50, size_sigma=0.5, seed=0)  # fmt: skip
    model = fljax.models.get("mlp", num_classes=2, hidden=(64, 64))
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=1, batch_size=16)
    return data, model, algo, args.per_round


def _cnn_federation(clients: int, images: int):
    """Each site's images from its own seed, so a process draws only the sites it hosts."""
    import numpy as np

    import fljax
    from fljax.distributed import hosted_rows

    w = np.random.default_rng(0).normal(size=(int(np.prod(CNN_SHAPE)),))
    rows = hosted_rows(clients)

    def site(c):
        x = np.random.default_rng([1, c]).normal(size=(images, *CNN_SHAPE)).astype(np.float32)
        return x, (x.reshape(images, -1) @ w > 0).astype(np.int32)

    sites = [site(c) for c in rows]
    xs, ys = [s[0] for s in sites], [s[1] for s in sites]
    n_test = images // 4
    counts = np.full(clients, images - n_test)
    hosted = (rows, counts, np.full(clients, n_test), CNN_SHAPE, ())
    return fljax.data.from_client_arrays(
        [x[n_test:] for x in xs], [y[n_test:] for y in ys], [x[:n_test] for x in xs],
        [y[:n_test] for y in ys], num_classes=2, name="images", hosted=hosted,
    )  # fmt: skip


def _cnn(args):
    import fljax

    data = _cnn_federation(args.cnn_clients, args.cnn_images)
    model = fljax.models.get("cnn", num_classes=2, features=(16, 32), dense=64)
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=None, local_steps=5,
                                batch_size=16)  # fmt: skip
    return data, model, algo, args.cnn_per_round


def worker(args) -> dict:
    """One process of one configuration: its figures."""
    import numpy as np

    from fljax import distributed

    if distributed.from_env() is not None:
        distributed.initialize()
    import jax
    import jax.numpy as jnp

    from fljax.engine import RunArgs, prepare

    t0 = time.perf_counter()
    data, model, algo, k = {"hospitals": _hospitals, "cnn": _cnn}[args.worker](args)
    data_s = time.perf_counter() - t0
    run = prepare(RunArgs(algorithm=algo, model=model, data=data, rounds=args.rounds,
                          clients_per_round=k))  # fmt: skip
    run.choose_client_map(0)
    ids = jnp.arange(args.rounds, dtype=jnp.int32)
    t0 = time.perf_counter()
    compiled = run.run_block.lower(run.state, run.k_rounds, ids, run.train).compile()
    compile_s = time.perf_counter() - t0
    state, _ = compiled(run.state, run.k_rounds, ids, run.train)
    jax.block_until_ready(state)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, run.k_rounds, ids, run.train))
        times.append(time.perf_counter() - t0)
    held = sum(np.asarray(a).nbytes for split in (data.train, data.test) for a in split[:2])
    device = sum(s.data.nbytes for a in jax.tree.leaves(run.train) for s in a.addressable_shards)
    return {
        "process": jax.process_index(), "processes": jax.process_count(),
        "devices": jax.local_device_count(), "clients": data.num_clients,
        "clients_per_round": k, "hosted": list(data.hosted or (0, data.num_clients)),
        "data_s": round(data_s, 2), "compile_s": round(compile_s, 2),
        "s_per_round": min(times) / args.rounds,
        "federation_mib": held / 2**20, "device_mib": device / 2**20,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }  # fmt: skip


def configuration(workload: str, n: int, cores: int, argv: list[str]) -> list[dict]:
    """Starts ``n`` worker processes of one run; every process's figures."""
    from fljax import distributed
    from fljax.launch import free_port

    devices = max(1, cores // n)
    address = f"127.0.0.1:{free_port()}"
    procs = []
    for i in range(n):
        env = os.environ | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        if n > 1:
            env |= {distributed.ENV_COORDINATOR: address, distributed.ENV_NUM_PROCESSES: str(n),
                    distributed.ENV_PROCESS_ID: str(i)}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", workload, *argv],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    outs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"{workload} with {n} processes failed:\n{err[-3000:]}")
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def _parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--workloads", nargs="+", default=["hospitals", "cnn"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hospitals", type=int, default=10_000)
    ap.add_argument("--per-round", type=int, default=1000)
    ap.add_argument("--cnn-clients", type=int, default=64)
    ap.add_argument("--cnn-images", type=int, default=64)
    ap.add_argument("--cnn-per-round", type=int, default=16)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return {}
    cores = os.cpu_count() or 1
    counts = [n for n in args.processes if n <= cores]
    skipped = [n for n in args.processes if n > cores]
    figures = {"cores": cores, "skipped_processes": skipped, "runs": {}}
    print(f"{cores} CPU cores; every configuration uses {cores} CPU devices in all"
          + (f"; {skipped} processes skipped (more than the cores)" if skipped else ""))
    print("| workload | processes | s / round | x 1 process | federation MiB / process "
          "| peak RSS GiB / process | compile s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for w in args.workloads:
        for n in counts:
            procs = configuration(w, n, cores, _drop_values(argv, "--processes", "--workloads"))
            figures["runs"][f"{w}_{n}p"] = procs
            one = figures["runs"].get(f"{w}_1p", procs)
            ratio = procs[0]["s_per_round"] / one[0]["s_per_round"]
            mib = max(p["federation_mib"] for p in procs)
            rss = max(p["peak_rss_gib"] for p in procs)
            figures[f"{w}_{n}p_over_1p"] = {
                "s_per_round": ratio,
                "federation_bytes": mib / max(p["federation_mib"] for p in one),
                "peak_rss": rss / max(p["peak_rss_gib"] for p in one),
            }  # fmt: skip
            print(f"| {w} | {n} | {procs[0]['s_per_round']:.3f} | {ratio:.2f} | {mib:.1f} | "
                  f"{rss:.2f} | {procs[0]['compile_s']:.1f} |")  # fmt: skip
    print(json.dumps(figures))
    return figures


def _drop_values(argv: list[str], *options: str) -> list[str]:
    """``argv`` without ``options`` and their values (what the workers need not see)."""
    out, skip = [], False
    for a in argv:
        if a.startswith("--"):
            skip = a in options
        if not skip:
            out.append(a)
    return out


if __name__ == "__main__":
    main()
