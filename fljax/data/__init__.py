"""Federations: stacked client arrays, partitioners and dataset sources."""

from fljax.data import _hospitals as _hospitals  # registers synthetic_hospitals
from fljax.data import _medical as _medical  # registers heart_disease, tcga_brca, ham10000
from fljax.data import _tfds as _tfds  # registers tfds and its medical aliases
from fljax.data._describe import describe as describe
from fljax.data._describe import plot_federation as plot_federation
from fljax.data._download import ChecksumError as ChecksumError
from fljax.data._federated import ClientData as ClientData
from fljax.data._federated import FederatedData as FederatedData
from fljax.data._federated import drop_empty_clients as drop_empty_clients
from fljax.data._federated import from_client_arrays as from_client_arrays
from fljax.data._federated import gather_clients as gather_clients
from fljax.data._federated import select_clients as select_clients
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
from fljax.data._tfds import tfds_images as tfds_images
