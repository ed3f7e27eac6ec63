"""Named algorithms: client objective, transforms, aggregator and server optimizer, composed."""

from fljax.algorithms._algorithm import MODES as MODES
from fljax.algorithms._algorithm import Algorithm as Algorithm
from fljax.algorithms._algorithm import Personal as Personal
from fljax.algorithms._algorithm import get as get
from fljax.algorithms._algorithm import names as names
from fljax.algorithms._algorithm import register as register
from fljax.algorithms._builders import centralized as centralized
from fljax.algorithms._builders import cyclic as cyclic
from fljax.algorithms._builders import fedadagrad as fedadagrad
from fljax.algorithms._builders import fedadam as fedadam
from fljax.algorithms._builders import fedavg as fedavg
from fljax.algorithms._builders import fedavgm as fedavgm
from fljax.algorithms._builders import feddyn as feddyn
from fljax.algorithms._builders import fednova as fednova
from fljax.algorithms._builders import fedprox as fedprox
from fljax.algorithms._builders import fedyogi as fedyogi
from fljax.algorithms._builders import local as local
from fljax.algorithms._builders import scaffold as scaffold
from fljax.algorithms._fedopt import FedOptState as FedOptState
from fljax.algorithms._fedopt import fedopt as fedopt
from fljax.algorithms._personal import apfl as apfl
from fljax.algorithms._personal import ditto as ditto
from fljax.algorithms._personal import fedbn as fedbn
from fljax.algorithms._personal import fedper as fedper
from fljax.algorithms._personal import fedrep as fedrep
from fljax.algorithms._personal import partition as partition
