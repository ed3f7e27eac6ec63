"""Site valuation over the runs axis: how much each hospital contributes.

A :class:`Game` trains coalitions of sites as counterfactual federations
(``fljax.simulate(subsets=...)``: many coalitions x seeds in one compiled program) and scores
each on a held-out validation split. Methods: :func:`leave_one_out`, exact :func:`shapley`
(all ``2^n`` coalitions), :func:`tmc_shapley` (Ghorbani and Zou, 2019) and the
reconstruction-based :func:`gtg_shapley` (Liu et al., 2022), each per seed with confidence
intervals (:class:`Valuation`).
"""

from fljax.valuation._game import Game as Game
from fljax.valuation._game import game as game
from fljax.valuation._game import holdout as holdout
from fljax.valuation._gtg import gtg_shapley as gtg_shapley
from fljax.valuation._shapley import EXACT_MAX_SITES as EXACT_MAX_SITES
from fljax.valuation._shapley import Valuation as Valuation
from fljax.valuation._shapley import leave_one_out as leave_one_out
from fljax.valuation._shapley import shapley as shapley
from fljax.valuation._shapley import tmc_shapley as tmc_shapley
