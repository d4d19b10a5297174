"""flowscope: Kubernetes network-flow visibility built from plugins.

The public plugin API::

    from flowscope import hookimpl, Source, Enricher, Sink, RetryableError, Context
"""

from flowscope.core.components import Context, Enricher, Sink, Source
from flowscope.core.config import Duration, OptionsModel
from flowscope.core.errors import ConfigError, ConfigIssue, RetryableError
from flowscope.core.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "Context",
    "Duration",
    "Enricher",
    "OptionsModel",
    "RetryableError",
    "Sink",
    "Source",
    "__version__",
    "hookimpl",
]
