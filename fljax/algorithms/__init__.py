"""Named algorithms: client objective, transforms, aggregator and server optimizer, composed."""

from fljax.algorithms._algorithm import Algorithm as Algorithm
from fljax.algorithms._algorithm import fedavg as fedavg
from fljax.algorithms._algorithm import get as get
from fljax.algorithms._algorithm import names as names
from fljax.algorithms._algorithm import register as register
