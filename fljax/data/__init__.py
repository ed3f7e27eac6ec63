"""Federations: stacked client arrays, partitioners and dataset sources."""

from fljax.data._federated import ClientData as ClientData
from fljax.data._federated import FederatedData as FederatedData
from fljax.data._federated import from_client_arrays as from_client_arrays
from fljax.data._federated import gather_clients as gather_clients
from fljax.data._federated import standardize_clients as standardize_clients
from fljax.data._partition import PARTITIONS as PARTITIONS
from fljax.data._partition import dirichlet as dirichlet
from fljax.data._partition import iid as iid
from fljax.data._partition import natural as natural
from fljax.data._partition import partition as partition
from fljax.data._partition import quantity_skew as quantity_skew
from fljax.data._partition import shards as shards
from fljax.data._sources import federate as federate
from fljax.data._sources import get as get
from fljax.data._sources import load as load
from fljax.data._sources import names as names
from fljax.data._sources import register as register
