"""System heterogeneity: device profiles, availability, a simulated clock and deadlines."""

from fljax.system._profiles import DEADLINE_POLICIES as DEADLINE_POLICIES
from fljax.system._profiles import SELECTIONS as SELECTIONS
from fljax.system._profiles import DeviceProfiles as DeviceProfiles
from fljax.system._profiles import SystemModel as SystemModel
from fljax.system._profiles import build as build
from fljax.system._profiles import client_times as client_times
from fljax.system._profiles import profiles as profiles
from fljax.system._profiles import steps_within as steps_within
from fljax.system._profiles import system as system
