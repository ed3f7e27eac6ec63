"""Command lines documented in the README and the docs pages, for the tests that check each
one composes (``tests/test_readme.py``: ``fljax-run``; ``tests/test_deploy.py``:
``fljax-deploy``)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def bash_lines() -> list[str]:
    """Every line of the pages' ```bash blocks: continuations joined, ``# comments`` and
    repeated spaces dropped, each line once, in page order."""
    text = "\n".join(page.read_text() for page in PAGES)
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = (" ".join(line.split(" #")[0].split())
             for block in blocks for line in block.replace("\\\n", " ").splitlines())  # fmt: skip
    return [line for line in dict.fromkeys(lines) if line]
