"""Every ``fljax-run`` command line in the README and the documentation pages composes and
passes every check a real run makes (``dry_run``: the components are built and the engine's
rules applied, nothing trains), so a documented command can never go stale unnoticed."""

import itertools
import re
import shlex

import pytest
from hydra import compose, initialize_config_dir

from fljax.run import CONF_DIR, check
from tests.doc_commands import bash_lines

# Lines whose checks need what a test machine lacks, each with the reason.
NEEDS = {
    "pneumonia_mnist": "a TensorFlow Datasets download",
    "init_from=weights.npz": "the user's own weights file",
    "hydra/sweeper=optuna": "Optuna's sweeper (it picks the values itself)",
}


def _commands() -> list[str]:
    """The ``fljax-run`` lines of the README's and the docs' bash blocks, each once; an
    ``fljax-launch ... -- <overrides>`` line counts as ``fljax-run <overrides>``."""
    out = []
    for line in bash_lines():
        if line.startswith("fljax-launch") and " -- " in line:
            line = "fljax-run " + line.split(" -- ", 1)[1]
        if line.startswith("fljax-run") and line not in out:
            out.append(line)
    return out


def _settings(command: str) -> list[list[str]]:
    """The override lists of one command (a multirun's every combination)."""
    args = [a for a in shlex.split(command)[1:] if a != "-m"]
    choices = [a.split("=", 1)[0] + "=" + v for a in args if "=" in a
               for v in [a.split("=", 1)[1]]]  # fmt: skip
    split = [[f"{c.split('=', 1)[0]}={v}" for v in c.split("=", 1)[1].split(",")]
             if "," in c and not re.search(r"[\[{]", c) else [c] for c in choices]  # fmt: skip
    return [list(p) for p in itertools.product(*split)]


COMMANDS = _commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 15, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_passes_every_check(command, shared_data):
    reason = next((why for key, why in NEEDS.items() if key in command), None)
    if reason is not None:
        pytest.skip(f"needs {reason}")
    for overrides in _settings(command):
        overrides = [o.replace("../shared/data", str(shared_data)) for o in overrides]
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
        assert check(cfg).startswith("dry run: "), overrides
