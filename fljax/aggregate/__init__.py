"""Aggregators: transforms from ``deltas[K, ...]`` and ``weights[K]`` to one update."""

from fljax.aggregate._mean import mean as mean
from fljax.aggregate._mean import normalize_weighted_sum as normalize_weighted_sum
from fljax.aggregate._mean import weighted_mean as weighted_mean
from fljax.aggregate._mean import weighted_sum as weighted_sum
from fljax.aggregate._normalized import FedDynState as FedDynState
from fljax.aggregate._normalized import feddyn as feddyn
from fljax.aggregate._normalized import fednova as fednova
