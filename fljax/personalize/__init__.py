"""Personalized federated learning: local fine-tuning and per-site evaluation."""

from fljax.personalize._finetune import compare_sites as compare_sites
from fljax.personalize._finetune import evaluate_sites as evaluate_sites
from fljax.personalize._finetune import finetune as finetune
