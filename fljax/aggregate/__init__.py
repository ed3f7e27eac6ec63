"""Aggregators: transforms from ``deltas[K, ...]`` and ``weights[K]`` to one update; the
robust ones (``get(name, ...)``, ``names()``) as named :class:`Aggregator` objects."""

from fljax.aggregate._mean import mean as mean
from fljax.aggregate._mean import normalize_weighted_sum as normalize_weighted_sum
from fljax.aggregate._mean import weighted_mean as weighted_mean
from fljax.aggregate._mean import weighted_sum as weighted_sum
from fljax.aggregate._normalized import FedDynState as FedDynState
from fljax.aggregate._normalized import feddyn as feddyn
from fljax.aggregate._normalized import fednova as fednova
from fljax.aggregate._robust import Aggregator as Aggregator
from fljax.aggregate._robust import RobustState as RobustState
from fljax.aggregate._robust import bucketing as bucketing
from fljax.aggregate._robust import bulyan as bulyan
from fljax.aggregate._robust import centered_clipping as centered_clipping
from fljax.aggregate._robust import fltrust as fltrust
from fljax.aggregate._robust import geometric_median as geometric_median
from fljax.aggregate._robust import get as get
from fljax.aggregate._robust import krum as krum
from fljax.aggregate._robust import median as median
from fljax.aggregate._robust import multi_krum as multi_krum
from fljax.aggregate._robust import names as names
from fljax.aggregate._robust import norm_bounding as norm_bounding
from fljax.aggregate._robust import trimmed_mean as trimmed_mean
