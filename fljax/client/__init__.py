"""Local training: the per-client loop lifted over clients with ``jax.vmap``."""

from fljax.client._local import DPSGD as DPSGD
from fljax.client._local import ClientContext as ClientContext
from fljax.client._local import ClientOutput as ClientOutput
from fljax.client._local import LocalPlan as LocalPlan
from fljax.client._local import batch_indices as batch_indices
from fljax.client._local import batch_loss_fn as batch_loss_fn
from fljax.client._local import clip_by_norm as clip_by_norm
from fljax.client._local import evaluate_fn as evaluate_fn
from fljax.client._local import example_loss_fn as example_loss_fn
from fljax.client._local import gaussian_noise_like as gaussian_noise_like
from fljax.client._local import make_client_update as make_client_update
from fljax.client._local import masked_mean as masked_mean
from fljax.client._local import num_local_steps as num_local_steps
from fljax.client._local import plan_local_work as plan_local_work
from fljax.client._local import shuffle_real_first as shuffle_real_first
