"""flowscope: Kubernetes network-flow visibility built from plugins.

The public plugin API::

    from flowscope import hookimpl, Source, Enricher, Sink, RetryableError, Context

and for flow-table modes and HTTP routes: ``TableConfig``, ``Request``, ``Response``.
"""

from flowscope.core.components import Context, Enricher, Sink, Source
from flowscope.core.config import Duration, OptionsModel
from flowscope.core.errors import ConfigError, ConfigIssue, RetryableError
from flowscope.core.flowtable import TableConfig
from flowscope.core.hookspecs import hookimpl
from flowscope.core.http import Request, Response

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "Context",
    "Duration",
    "Enricher",
    "OptionsModel",
    "Request",
    "Response",
    "RetryableError",
    "Sink",
    "Source",
    "TableConfig",
    "__version__",
    "hookimpl",
]
