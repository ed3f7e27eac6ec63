"""Models: Flax modules as pure ``init`` / ``apply`` pairs over plain pytrees."""

from fljax.models._models import Model as Model
from fljax.models._models import cnn as cnn
from fljax.models._models import cnn_bn as cnn_bn
from fljax.models._models import from_linen as from_linen
from fljax.models._models import from_linen_bn as from_linen_bn
from fljax.models._models import get as get
from fljax.models._models import logistic as logistic
from fljax.models._models import mlp as mlp
from fljax.models._models import mlp_bn as mlp_bn
from fljax.models._models import names as names
from fljax.models._models import num_params as num_params
from fljax.models._models import param_bytes as param_bytes
