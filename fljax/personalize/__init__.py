"""Personalized federated learning: local fine-tuning and per-site evaluation.

The personalized algorithms themselves (``fedper``, ``fedrep``, ``fedbn``, ``ditto``, ``apfl``)
are in :mod:`fljax.algorithms`; :func:`partition` labels a model's leaves shared / private.
"""

from fljax.algorithms._personal import partition as partition
from fljax.personalize._finetune import compare_sites as compare_sites
from fljax.personalize._finetune import evaluate_sites as evaluate_sites
from fljax.personalize._finetune import finetune as finetune
