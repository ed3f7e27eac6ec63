"""A configured deployment as a Flower App: the resolved fljax config travels in the App's run
config (``[tool.flwr.app.config] fljax = "<json>"``); the App's module builds the
``ServerApp`` and ``ClientApp`` from it with the same Hydra targets ``fljax-run`` uses.
:func:`launch` writes the App and a SuperLink connection, then runs it with ``flwr run``."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from fljax.deploy._spec import Deployment, SecAggPlus, Task

APP_MODULE = "fljax_flower_app"
RUN_CONFIG_KEY = "fljax"
CONNECTION = "fljax"

_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "fljax deployment: {algorithm} on {num_sites} sites"
license = "Apache-2.0"
dependencies = ["flwr>=1.42", "fljax"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fljax"

[tool.flwr.app.components]
serverapp = "{module}:server"
clientapp = "{module}:client"

[tool.flwr.app.config]
{key} = {config}
"""

_MODULE = '''"""An fljax deployment (fljax.deploy.write_app): both apps read the run config."""

from fljax.deploy import client_from_run_config, server_from_run_config

server = server_from_run_config()
client = client_from_run_config()
'''


def _instantiate(node, **kwargs):
    from hydra.utils import instantiate

    return None if node is None else instantiate(node, _convert_="all", **kwargs)


@functools.lru_cache(maxsize=4)
def deployment_from_json(text: str) -> Deployment:
    """The :class:`Deployment` of a resolved ``fljax-deploy`` config (JSON); memoized, so a
    process that serves many messages builds and compiles once."""
    cfg = json.loads(text)
    task = Task(**{**cfg["task"], "metrics": tuple(cfg["task"]["metrics"])})
    model_kwargs = {}
    if cfg["model"].get("num_classes") is None:
        model_kwargs["num_classes"] = task.num_classes
    secagg = cfg.get("secagg_plus")
    return Deployment(
        algorithm=_instantiate(cfg["algorithm"]), model=_instantiate(cfg["model"], **model_kwargs),
        task=task, num_sites=int(cfg["num_sites"]), rounds=int(cfg["rounds"]),
        clients_per_round=cfg.get("clients_per_round"), seed=int(cfg["seed"]),
        eval_every=int(cfg["eval_every"]), compression=_instantiate(cfg.get("compression")),
        privacy=_instantiate(cfg.get("privacy")), aggregator=_instantiate(cfg.get("aggregator")),
        secagg=None if secagg is None else SecAggPlus(**secagg), run_dir=cfg.get("run_dir"),
        overwrite=bool(cfg.get("overwrite", False)),
        round_timeout=float(cfg.get("round_timeout", 300)),
        connect_timeout=float(cfg.get("connect_timeout", 300)),
    )  # fmt: skip


def _run_config_factory(context) -> Deployment:
    if RUN_CONFIG_KEY not in context.run_config:
        raise ValueError(f"the Flower App's run config has no {RUN_CONFIG_KEY!r} entry "
                         "(write the App with fljax.deploy.write_app)")  # fmt: skip
    return deployment_from_json(str(context.run_config[RUN_CONFIG_KEY]))


def server_from_run_config():
    """The ``ServerApp`` of the deployment in the run config's ``fljax`` entry."""
    from fljax.deploy._server import server_app

    return server_app(_run_config_factory)


def client_from_run_config():
    """The ``ClientApp`` of the deployment in the run config's ``fljax`` entry."""
    from fljax.deploy._client import client_app

    return client_app(_run_config_factory)


def write_app(app_dir: str | os.PathLike, config: dict) -> Path:
    """Writes a Flower App for the resolved ``fljax-deploy`` config ``config`` to ``app_dir``
    (``pyproject.toml`` and a two-line module); returns the folder."""
    app_dir = Path(app_dir)
    app_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, sort_keys=True)
    deployment_from_json(text)  # refuse a bad config here, not on the SuperLink
    (app_dir / "pyproject.toml").write_text(_PYPROJECT.format(
        name="fljax-deployment", algorithm=config["algorithm"].get("name", "?"),
        num_sites=config["num_sites"], module=APP_MODULE, key=RUN_CONFIG_KEY,
        config=json.dumps(text)))  # fmt: skip
    (app_dir / f"{APP_MODULE}.py").write_text(_MODULE)
    return app_dir


def write_connection(flwr_home: str | os.PathLike, superlink: str, insecure: bool,
                     root_certificates: str | None = None) -> Path:  # fmt: skip
    """The Flower CLI's SuperLink connection ``fljax`` in ``flwr_home/config.toml``."""
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f'address = "{superlink}"']  # fmt: skip
    if insecure:
        lines.append("insecure = true")
    elif root_certificates is not None:
        lines.append(f'root-certificates = "{Path(root_certificates).resolve()}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home


def flower_bin(name: str) -> str:
    """A Flower executable next to this Python (the venv's), else on ``PATH``."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def launch(config: dict, app_dir: str | os.PathLike, flwr_home: str | os.PathLike,
           superlink: str, insecure: bool = True, root_certificates: str | None = None,
           timeout: float | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """Writes the App and the connection, then ``flwr run <app> fljax --stream`` (returns when
    the run ends; its log is the completed process's stdout)."""
    app = write_app(app_dir, config)
    home = write_connection(flwr_home, superlink, insecure, root_certificates)
    env = {**os.environ, "FLWR_HOME": str(home)}
    return subprocess.run([flower_bin("flwr"), "run", str(app), CONNECTION, "--stream"],
                          env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip
