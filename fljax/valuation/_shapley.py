"""Site values from a :class:`Game`: leave-one-out, exact Shapley values (every coalition)
and truncated Monte Carlo Shapley (Ghorbani and Zou, 2019), each per seed with a confidence
interval over seeds."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from fljax.valuation._game import Game

EXACT_MAX_SITES = 12  # 4,096 coalitions per seed
"""The most sites exact Shapley values enumerate (2^n coalitions per seed)."""


@dataclasses.dataclass
class Valuation:
    """Site values of one method.

    Attributes:
        method: ``"leave_one_out"``, ``"shapley"``, ``"tmc_shapley"`` or ``"gtg_shapley"``.
        sites: the site names; ``seeds``: the training seeds.
        values: ``[seeds, sites]``, each seed's values.
        full, empty: ``[seeds]`` utilities of the grand coalition and of the empty one
            (the initial model); Shapley values sum to ``full - empty`` (efficiency).
        federations: federations trained for it (coalitions x seeds, those already in the
            game's cache not counted; GTG-Shapley: its one training run per seed, whose
            rounds also train every site alone, ``info["one_site_rounds"]``).
        info: method details (permutations drawn, convergence, truncations, ...).
    """

    method: str
    sites: tuple
    seeds: list
    values: np.ndarray
    full: np.ndarray
    empty: np.ndarray
    federations: int = 0
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        """``[sites]`` values averaged over seeds."""
        return self.values.mean(axis=0)

    def interval(self, level: float = 0.95) -> np.ndarray:
        """``[sites]`` half-width of the Student-t confidence interval of :attr:`mean` over
        seeds (0 with one seed: no spread is measured)."""
        s = self.values.shape[0]
        if s < 2:
            return np.zeros(self.values.shape[1])
        from scipy import stats  # loaded when used (~1 s at import)

        sem = self.values.std(axis=0, ddof=1) / math.sqrt(s)
        return stats.t.ppf(0.5 + level / 2, s - 1) * sem

    def ranking(self) -> list[str]:
        """Site names from the most to the least valuable (by :attr:`mean`)."""
        return [self.sites[i] for i in np.argsort(-self.mean, kind="stable")]

    def table(self) -> str:
        """A Markdown table: site, mean value, 95% interval, rank."""
        rank = {s: r + 1 for r, s in enumerate(self.ranking())}
        ci = self.interval()
        rows = [f"| {s} | {m:+.4f} | ±{h:.4f} | {rank[s]} |"
                for s, m, h in zip(self.sites, self.mean, ci, strict=True)]  # fmt: skip
        head = f"| site | {self.method} | 95% CI ({len(self.seeds)} seeds) | rank |"
        return "\n".join([head, "|---|---:|---:|---:|", *rows])

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"method": self.method, "sites": list(self.sites), "seeds": self.seeds,
                "mean": self.mean.tolist(), "ci95": self.interval().tolist(),
                "values": self.values.tolist(), "full": self.full.tolist(),
                "empty": self.empty.tolist(), "federations": self.federations,
                "info": self.info}  # fmt: skip


def _mask(n: int, members) -> tuple:
    members = set(members)
    return tuple(i in members for i in range(n))


def leave_one_out(g: Game) -> Valuation:
    """``v(N) - v(N \\ {i})`` per site (the drop in utility when the site leaves)."""
    n = g.num_sites
    masks = [_mask(n, range(n)), _mask(n, ())]
    masks += [_mask(n, [j for j in range(n) if j != i]) for i in range(n)]
    before = g.federations
    u = g.utilities(masks)
    return Valuation("leave_one_out", g.sites, g.seeds, u[:, :1] - u[:, 2:], u[:, 0], u[:, 1],
                     g.federations - before)  # fmt: skip


def shapley(g: Game) -> Valuation:
    """Exact Shapley values :math:`\\phi_i = \\sum_{S \\subseteq N \\setminus i}
    \\frac{|S|! (n - |S| - 1)!}{n!} (v(S \\cup i) - v(S))` (Shapley, 1953), from all
    :math:`2^n` coalitions trained per seed (``n`` at most :data:`EXACT_MAX_SITES`)."""
    n = g.num_sites
    if n > EXACT_MAX_SITES:
        raise ValueError(f"exact Shapley values train 2^n coalitions; the federation has "
                         f"{n} sites (at most {EXACT_MAX_SITES}): use tmc_shapley")  # fmt: skip
    masks = list(itertools.product((False, True), repeat=n))
    before = g.federations
    u = g.utilities(masks)  # [seeds, 2^n]
    index = {m: j for j, m in enumerate(masks)}
    values = np.zeros((u.shape[0], n))
    for m, j in index.items():
        size = sum(m)
        for i in range(n):
            if m[i]:
                continue
            with_i = index[m[:i] + (True,) + m[i + 1:]]
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            values[:, i] += weight * (u[:, with_i] - u[:, j])
    full, empty = u[:, index[(True,) * n]], u[:, index[(False,) * n]]
    return Valuation("shapley", g.sites, g.seeds, values, full, empty, g.federations - before,
                     {"coalitions": len(masks)})  # fmt: skip


def walk_permutations(perms: np.ndarray, start: np.ndarray, full: float, eps: float,
                      utilities) -> np.ndarray:
    """Marginal contributions ``[S, P, n]`` of permutations ``perms[P, n]``, walked depth by
    depth: ``utilities(prefixes) -> [S, len(prefixes)]`` scores all live prefixes of one depth
    at once (``S`` seeds; ``start[S]`` is the empty prefix's utility). A permutation stops
    once its prefix's utility (mean over seeds) is within ``eps`` of ``full``; its later
    marginals are 0 (truncation, Ghorbani and Zou 2019; Liu et al. 2022)."""
    p, n = perms.shape
    marg = np.zeros((start.shape[0], p, n))
    prev = np.repeat(np.asarray(start, np.float64)[:, None], p, axis=1)  # [S, P]
    alive = np.ones(p, bool)
    for d in range(1, n + 1):
        alive &= np.abs(full - prev.mean(axis=0)) >= eps
        if not alive.any():
            break
        rows = np.flatnonzero(alive)
        cur = prev.copy()
        cur[:, rows] = utilities([perms[r, :d] for r in rows])
        marg[:, rows, perms[rows, d - 1]] = (cur - prev)[:, rows]
        prev = cur
    return marg


def _walk_batch(g: Game, perms: np.ndarray, full_mean: float, tolerance: float) -> np.ndarray:
    """A batch of TMC permutations (:func:`walk_permutations`): each depth's uncached
    prefixes trained as one program; truncated within ``tolerance * |v(N)|`` of ``v(N)``."""
    n = g.num_sites
    empty = g.utilities([_mask(n, ())])[:, 0]
    return walk_permutations(perms, empty, full_mean, tolerance * abs(full_mean),
                             lambda prefixes: g.utilities([_mask(n, m) for m in prefixes]))


def tmc_shapley(g: Game, *, tolerance: float = 0.01, batch: int = 16, convergence: float = 0.05,
                max_permutations: int = 1000, seed: int = 0) -> Valuation:
    """Truncated Monte Carlo Shapley (Ghorbani and Zou, 2019, Algorithm 1): the mean marginal
    contribution of each site over random permutations, a permutation truncated once its
    prefix's utility is within ``tolerance`` (relative) of ``v(N)``. Permutations come in
    batches of ``batch``; it stops when the values of the last 100 permutations (half of them
    while fewer than 200) moved by less than ``convergence`` on average relative to the current
    values (the paper's criterion), or at ``max_permutations``."""
    n = g.num_sites
    if not 0 <= tolerance < 1 or not 0 < convergence < 1 or batch < 1 or max_permutations < 1:
        raise ValueError("tmc_shapley needs 0 <= tolerance < 1, 0 < convergence < 1, batch >= 1"
                         f", max_permutations >= 1; got {tolerance}, {convergence}, {batch}, "
                         f"{max_permutations}")  # fmt: skip
    rng = np.random.default_rng(seed)
    before = g.federations
    full = g.utilities([_mask(n, range(n))])[:, 0]
    marginals, running, error = [], [], float("inf")
    while len(running) < max_permutations:
        perms = np.stack([rng.permutation(n) for _ in range(batch)])
        marginals.append(_walk_batch(g, perms, float(full.mean()), tolerance))
        allm = np.concatenate(marginals, axis=1)  # [seeds, P, n]
        counts = np.arange(1, allm.shape[1] + 1)[:, None]
        running = np.cumsum(allm.mean(axis=0), axis=0) / counts  # [P, n] running means
        window = min(100, len(running) // 2)
        if window >= 10:
            last = running[-1]
            error = float(np.mean(np.abs(running[-window:] - last) / (np.abs(last) + 1e-12)))
            if error < convergence:
                break
    values = np.concatenate(marginals, axis=1).mean(axis=1)
    empty = g.utilities([_mask(n, ())])[:, 0]
    info = {"permutations": len(running), "converged": error < convergence,
            "error": error, "tolerance": tolerance, "coalitions": len(g.cache)}  # fmt: skip
    return Valuation("tmc_shapley", g.sites, g.seeds, values, full, empty,
                     g.federations - before, info)  # fmt: skip
