"""``fljax-deploy``: composes the Hydra config ``conf/deploy.yaml`` (the same groups as
``fljax-run``), writes the Flower App and the SuperLink connection into the run folder
(``.fljax/flower_app``, ``.fljax/flower``) and runs it with ``flwr run``; the ServerApp
writes ``metrics.jsonl``, ``summary.json`` and ``checkpoint/`` to the run folder (a path on
the SuperLink's host)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fljax._io import SUMMARY_FILE
from fljax.run import CONF_DIR

LAUNCH_KEYS = ("superlink", "insecure", "root_certificates")


def deploy_config(cfg: DictConfig, run_dir: Path) -> dict:
    """The resolved config the Flower App carries (without the launch keys)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config = {k: v for k, v in config.items() if k not in (*LAUNCH_KEYS, "hydra")}
    config["run_dir"] = str(run_dir.resolve())
    return config


def _deploy(cfg: DictConfig, run_dir: Path) -> None:
    from fljax.deploy._app import launch

    if cfg.insecure and cfg.root_certificates is not None:
        raise ValueError("insecure=true and root_certificates are exclusive")
    if not cfg.insecure and cfg.root_certificates is None:
        raise ValueError("root_certificates=<CA file> is needed for TLS (or insecure=true "
                         "for a local test)")  # fmt: skip
    meta = run_dir / ".fljax"
    done = launch(deploy_config(cfg, run_dir), meta / "flower_app", meta / "flower",
                  str(cfg.superlink), bool(cfg.insecure), cfg.root_certificates)  # fmt: skip
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    summary = run_dir / SUMMARY_FILE
    status = json.loads(summary.read_text())["status"] if summary.exists() else "not started"
    if done.returncode != 0 or status != "finished":
        raise RuntimeError(f"the run did not finish (flwr run exit {done.returncode}, "
                           f"status {status!r}; see {run_dir})")  # fmt: skip


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="deploy")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        _deploy(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"fljax-deploy: error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the launcher computes nothing
    _hydra_main()
