"""Poisoning attacks by a fixed set of malicious clients: data poisoning (label flipping, a
backdoor trigger) applied to their training data before the run, and model poisoning inside
the compiled round (sign flipping, scaling / model replacement, Gaussian updates, A Little Is
Enough, inner-product manipulation, Min-Max / Min-Sum), the omniscient ones crafted from the
round's benign updates. ``fljax.simulate(..., attack=fljax.attacks.get(name, ...))``."""

from fljax.attacks._attacks import Attack as Attack
from fljax.attacks._attacks import alie as alie
from fljax.attacks._attacks import alie_z as alie_z
from fljax.attacks._attacks import backdoor as backdoor
from fljax.attacks._attacks import gaussian as gaussian
from fljax.attacks._attacks import get as get
from fljax.attacks._attacks import ipm as ipm
from fljax.attacks._attacks import label_flip as label_flip
from fljax.attacks._attacks import malicious_clients as malicious_clients
from fljax.attacks._attacks import min_max as min_max
from fljax.attacks._attacks import min_sum as min_sum
from fljax.attacks._attacks import names as names
from fljax.attacks._attacks import scaling as scaling
from fljax.attacks._attacks import sign_flip as sign_flip
from fljax.attacks._attacks import trigger_value_of as trigger_value_of
from fljax.attacks._attacks import triggered as triggered
