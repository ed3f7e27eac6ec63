"""Differential privacy (client-level, local, record-level DP-SGD), accounting with
``dp-accounting``, secure aggregation (SecAgg / SecAgg+, simulated), and leakage attacks
(membership inference, gradient inversion)."""

from fljax.privacy import audit as audit  # noqa: E402  (after the mechanisms it audits)
from fljax.privacy._accounting import ACCOUNTANTS as ACCOUNTANTS
from fljax.privacy._accounting import calibrate_noise_multiplier as calibrate_noise_multiplier
from fljax.privacy._accounting import dp_event as dp_event
from fljax.privacy._accounting import epsilon as epsilon
from fljax.privacy._accounting import validate_budget as validate_budget
from fljax.privacy._attacks import AttackResult as AttackResult
from fljax.privacy._attacks import calibrated_loss_mia as calibrated_loss_mia
from fljax.privacy._attacks import gradient_alignment_mia as gradient_alignment_mia
from fljax.privacy._attacks import invert_gradients as invert_gradients
from fljax.privacy._attacks import loss_threshold_mia as loss_threshold_mia
from fljax.privacy._attacks import membership_metrics as membership_metrics
from fljax.privacy._attacks import reconstruction_error as reconstruction_error
from fljax.privacy._mechanisms import LEVELS as LEVELS
from fljax.privacy._mechanisms import AdaptiveClipping as AdaptiveClipping
from fljax.privacy._mechanisms import AdaptiveClipState as AdaptiveClipState
from fljax.privacy._mechanisms import ClippedSum as ClippedSum
from fljax.privacy._mechanisms import Privacy as Privacy
from fljax.privacy._mechanisms import PrivacyPlan as PrivacyPlan
from fljax.privacy._mechanisms import adaptive_update_noise as adaptive_update_noise
from fljax.privacy._mechanisms import binomial_cap as binomial_cap
from fljax.privacy._mechanisms import cohort_cap as cohort_cap
from fljax.privacy._mechanisms import gaussian_sum_aggregator as gaussian_sum_aggregator
from fljax.privacy._mechanisms import gaussian_sum_parts as gaussian_sum_parts
from fljax.privacy._mechanisms import get as get
from fljax.privacy._mechanisms import local_gaussian as local_gaussian
from fljax.privacy._mechanisms import names as names
from fljax.privacy._mechanisms import plan as plan
from fljax.privacy._secagg import SecAgg as SecAgg
from fljax.privacy._secagg import SecAggStats as SecAggStats
from fljax.privacy._secagg import decode as decode
from fljax.privacy._secagg import encode as encode
from fljax.privacy._secagg import graph_degree as graph_degree
from fljax.privacy._secagg import message_bytes as message_bytes
from fljax.privacy._secagg import neighbours as neighbours
from fljax.privacy._secagg import ring_levels as ring_levels
from fljax.privacy._secagg import secure_aggregator as secure_aggregator
from fljax.privacy._secagg import secure_ring_sum as secure_ring_sum
from fljax.privacy._secagg import secure_sum as secure_sum
