"""Federated unlearning: remove a site's influence from a trained federation.

:func:`unlearn` compares exact unlearning (retraining without the site, on the runs axis
beside the original run) with FedEraser (Liu et al., 2021): test metrics, distance to the
retrained model and a membership-inference attack on the removed site's records.
"""

from fljax.unlearning._unlearn import Unlearning as Unlearning
from fljax.unlearning._unlearn import unlearn as unlearn
