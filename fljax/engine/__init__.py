"""The round engine: a round is a composition of stages over a round context, two primitives
(``ClientMap``: the only place clients are vmapped, chunked or sharded; the reduction) carry
all client parallelism, and one table of rules checks a configuration before compiling.
See ``docs/architecture.md``."""

from fljax.engine._clock import full_work_times as full_work_times
from fljax.engine._context import AsyncKeys as AsyncKeys
from fljax.engine._context import LocalKeys as LocalKeys
from fljax.engine._context import RoundCtx as RoundCtx
from fljax.engine._context import Stage as Stage
from fljax.engine._context import SyncKeys as SyncKeys
from fljax.engine._context import compose as compose
from fljax.engine._loop import RunArgs as RunArgs
from fljax.engine._loop import client_models as client_models
from fljax.engine._loop import execute as execute
from fljax.engine._loop import prepare as prepare
from fljax.engine._loop import validate as validate
from fljax.engine._map import CLIENT_MAPS as CLIENT_MAPS
from fljax.engine._map import ClientMap as ClientMap
from fljax.engine._memory import auto_client_chunk as auto_client_chunk
from fljax.engine._memory import client_memory_bytes as client_memory_bytes
from fljax.engine._round import MODES as MODES
from fljax.engine._round import build_block as build_block
from fljax.engine._round import build_round as build_round
from fljax.engine._round import init_state as init_state
from fljax.engine._round import initial_state as initial_state
from fljax.engine._round import plan_local_work_for as plan_local_work_for
from fljax.engine._round import pool_clients as pool_clients
from fljax.engine._rules import RULES as RULES
from fljax.engine._rules import Rule as Rule
from fljax.engine._select import poisson_cap as poisson_cap
from fljax.engine._select import select_poisson as select_poisson
from fljax.engine._select import select_uniform as select_uniform
from fljax.engine._state import AsyncState as AsyncState
from fljax.engine._state import ClockState as ClockState
from fljax.engine._state import NonFiniteUpdateError as NonFiniteUpdateError
from fljax.engine._state import RoundMetrics as RoundMetrics
from fljax.engine._state import ServerState as ServerState
