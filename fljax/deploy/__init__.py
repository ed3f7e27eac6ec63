"""Deployment to real sites with Flower (optional extra ``fljax[deploy]``).

The same algorithm, model, compression and privacy objects :func:`fljax.simulate` takes run
as a Flower ``ServerApp`` (the simulation's server stages, aggregator, server optimizer,
central DP noise and accounting, run folder) and ``ClientApp`` (the simulation's compiled
client update for ONE site on the data its node reads, the client chain, per-site state kept
on the node) over a SuperLink and one SuperNode per site; Flower's SecAgg+ workflow when
secure aggregation is asked. The simulation engine never imports Flower. See
``docs/deploy.md``.
"""

from fljax.deploy._app import client_from_run_config as client_from_run_config
from fljax.deploy._app import deployment_from_json as deployment_from_json
from fljax.deploy._app import launch as launch
from fljax.deploy._app import server_from_run_config as server_from_run_config
from fljax.deploy._app import write_app as write_app
from fljax.deploy._app import write_connection as write_connection
from fljax.deploy._client import client_app as client_app
from fljax.deploy._local import LocalGrid as LocalGrid
from fljax.deploy._local import run_local as run_local
from fljax.deploy._server import server_app as server_app
from fljax.deploy._sites import SITE_FORMATS as SITE_FORMATS
from fljax.deploy._sites import SiteData as SiteData
from fljax.deploy._sites import load_site as load_site
from fljax.deploy._spec import Deployment as Deployment
from fljax.deploy._spec import SecAggPlus as SecAggPlus
from fljax.deploy._spec import Task as Task
