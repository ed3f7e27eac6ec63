"""Models: Flax modules as pure ``init`` / ``apply`` pairs over plain pytrees."""

from fljax.models._layers import CONV_IMPLS as CONV_IMPLS
from fljax.models._layers import Conv as Conv
from fljax.models._layers import conv2d as conv2d
from fljax.models._layers import max_pool as max_pool
from fljax.models._models import Model as Model
from fljax.models._models import cnn as cnn
from fljax.models._models import cnn_bn as cnn_bn
from fljax.models._models import efficientnet_b0 as efficientnet_b0
from fljax.models._models import from_linen as from_linen
from fljax.models._models import from_linen_bn as from_linen_bn
from fljax.models._models import from_linen_dropout as from_linen_dropout
from fljax.models._models import get as get
from fljax.models._models import logistic as logistic
from fljax.models._models import mlp as mlp
from fljax.models._models import mlp_bn as mlp_bn
from fljax.models._models import names as names
from fljax.models._models import num_params as num_params
from fljax.models._models import param_bytes as param_bytes
from fljax.models._models import resnet as resnet
from fljax.models._models import resnet8 as resnet8
from fljax.models._models import resnet18 as resnet18
from fljax.models._weights import leaf_names as leaf_names
from fljax.models._weights import load_weights as load_weights
from fljax.models._weights import save_weights as save_weights
