"""Run progress on stderr: a tqdm bar on a terminal, one plain line per evaluation otherwise
(a log file gets readable lines, not carriage returns), and a "compiling" phase either way."""

from __future__ import annotations

import sys
import time

SHOWN = ("test_loss", "test_accuracy")


class Progress:
    """Progress of a run of ``total`` rounds labelled ``desc``."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.t0 = total, desc, time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="round", desc=desc)
            self.bar.set_postfix_str("compiling...")
        else:
            print(f"{desc}: {total} rounds, compiling...", file=sys.stderr, flush=True)

    def resumed(self, start: int) -> None:
        """A resumed run starts at round ``start``."""
        if self.bar is not None:
            self.bar.update(start)
        else:
            print(f"{self.desc}: resumed at round {start}", file=sys.stderr, flush=True)

    def evaluated(self, start: int, end: int, metrics: dict) -> None:
        """The block ``start..end`` ran; ``metrics`` are those of its evaluation."""
        shown = {k: metrics[k] for k in SHOWN if k in metrics}
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})
            self.bar.update(end - start)
            return
        values = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
        print(f"{self.desc}: round {end}/{self.total}  {values}  "
              f"({time.perf_counter() - self.t0:.1f} s)", file=sys.stderr, flush=True)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
