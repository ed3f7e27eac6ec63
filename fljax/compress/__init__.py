"""Communication compression: client-side compressors with exact bit accounting."""

from fljax.compress._compressors import Compressor as Compressor
from fljax.compress._compressors import ErrorFeedbackState as ErrorFeedbackState
from fljax.compress._compressors import PowerSGDState as PowerSGDState
from fljax.compress._compressors import error_feedback as error_feedback
from fljax.compress._compressors import get as get
from fljax.compress._compressors import names as names
from fljax.compress._compressors import powersgd as powersgd
from fljax.compress._compressors import qsgd as qsgd
from fljax.compress._compressors import randk as randk
from fljax.compress._compressors import selective as selective
from fljax.compress._compressors import sign as sign
from fljax.compress._compressors import topk as topk
