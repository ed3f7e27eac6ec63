"""fljax: fast, faithful federated-learning simulation in JAX for healthcare research."""

from fljax import aggregate as aggregate
from fljax import algorithms as algorithms
from fljax import attacks as attacks
from fljax import client as client
from fljax import compress as compress
from fljax import data as data
from fljax import metrics as metrics
from fljax import models as models
from fljax import personalize as personalize
from fljax import privacy as privacy
from fljax import system as system
from fljax import unlearning as unlearning
from fljax import valuation as valuation
from fljax._base import EmptyState as EmptyState
from fljax._base import Linear as Linear
from fljax._base import Transform as Transform
from fljax._base import chain as chain
from fljax._base import identity as identity
from fljax._base import stateless as stateless
from fljax._devices import set_host_device_count as set_host_device_count
from fljax._io import RunRecord as RunRecord
from fljax._io import load_run as load_run
from fljax.simulate import NonFiniteUpdateError as NonFiniteUpdateError
from fljax.simulate import ServerState as ServerState
from fljax.simulate import SimulationResult as SimulationResult
from fljax.simulate import auto_client_chunk as auto_client_chunk
from fljax.simulate import simulate as simulate

__version__ = "0.1.0"

__all__ = [
    "EmptyState",
    "Linear",
    "NonFiniteUpdateError",
    "RunRecord",
    "ServerState",
    "SimulationResult",
    "Transform",
    "aggregate",
    "auto_client_chunk",
    "algorithms",
    "attacks",
    "chain",
    "client",
    "compress",
    "data",
    "identity",
    "load_run",
    "metrics",
    "models",
    "personalize",
    "privacy",
    "set_host_device_count",
    "simulate",
    "stateless",
    "system",
    "unlearning",
    "valuation",
]
