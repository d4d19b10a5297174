"""The flowscope plugin API (v1).

A plugin is a module (or object) with functions marked ``@flowscope.hookimpl`` whose names are
the hooks below. Plugins are found through the ``flowscope`` entry-point group::

    [project.entry-points.flowscope]
    my_plugin = "my_package.plugin"

Every hook except ``register_commands`` receives a ``register`` callable and is called once at
start-up; the hot path then calls the registered classes directly, never a hook per record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from flowscope.core.components import Enricher, Sink, Source
    from flowscope.core.flowtable import MergePolicy

PROJECT_NAME = "flowscope"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = [
    "register_bundles",
    "register_commands",
    "register_elements",
    "register_enrichers",
    "register_routes",
    "register_sinks",
    "register_sources",
    "register_table_modes",
]

BundleBuild = Callable[[dict[str, Any]], dict[str, Any]]


@hookspec
def register_elements(register: Callable[[str, int, int, str], None]) -> None:
    """Add Information Elements to the IE registry.

    :param register: ``register(name, enterprise_id, element_id, type, *, length=None, uuid=False)``;
        ``type`` is an RFC 7012 abstract data type name such as ``unsigned64``, ``string``,
        ``ipv4Address`` or ``dateTimeSeconds``. ``length`` gives an ``octetArray`` a fixed length;
        ``uuid=True`` makes it a 16-byte UUID that records carry as text. A name or
        (enterprise_id, element_id) already taken by a different element is an error naming both
        plugins.

    .. versionadded:: 0.1
    """


@hookspec
def register_sources(register: Callable[[str, type[Source]], None]) -> None:
    """Add source types.

    :param register: ``register(type_name, SourceClass)``. The class is built as
        ``SourceClass(options, context)``; ``run(emit)`` runs in its own thread.

    .. versionadded:: 0.1
    """


@hookspec
def register_enrichers(register: Callable[[str, type[Enricher]], None]) -> None:
    """Add enricher types.

    :param register: ``register(type_name, EnricherClass)``; ``enrich(records)`` returns the batch
        to pass on.

    .. versionadded:: 0.1
    """


@hookspec
def register_sinks(register: Callable[[str, type[Sink]], None]) -> None:
    """Add sink types.

    :param register: ``register(type_name, SinkClass)``; ``write(records)`` gets batches and
        raises :class:`flowscope.RetryableError` to have a batch retried.

    .. versionadded:: 0.1
    """


@hookspec
def register_bundles(register: Callable[[str, BundleBuild], None]) -> None:
    """Add bundles: named pipelines configured with their own keys.

    :param register: ``register(name, build)``; ``build(config)`` gets the config mapping without
        the keys every pipeline shares (``bundle``, ``plugins``, ``sources``, ``enrichers``,
        ``sinks``, ``dataDir``, ...) and returns a pipeline spec: a mapping with ``sources``,
        ``table``, ``enrichers`` and ``sinks`` as in the explicit config form. Raise
        :class:`flowscope.ConfigError` for bad keys.

    .. versionadded:: 0.1
    """


@hookspec
def register_table_modes(register: Callable[[str, type[MergePolicy]], None]) -> None:
    """Add flow-table modes: merge policies chosen with ``table: {mode: <name>}``.

    :param register: ``register(mode, PolicyClass)``. The runtime validates the ``table:`` mapping
        with ``PolicyClass.Options``, a subclass of :class:`flowscope.TableConfig` adding the mode's
        own keys (``TableConfig`` itself when the class has none), and builds the policy with
        ``PolicyClass.from_config(options)``. The policy is a
        :class:`flowscope.core.flowtable.MergePolicy`.

    .. versionadded:: 0.1
    """


@hookspec
def register_routes(register: Callable[..., None]) -> None:
    """Add HTTP routes to the server of a running pipeline (``apiAddress``).

    :param register: ``register(path, handler, methods=("GET",), *, public=False, title="")``.
        ``path`` is exact (``/flowrecords``) or has ``{name}`` parts, each matching one path segment
        (the last may be ``{name:path}``, matching the rest). ``handler(request)`` gets a
        :class:`flowscope.Request` and returns a :class:`flowscope.Response`; it runs in the
        connection's thread, so it must only read what the pipeline's threads change. Every route
        needs the API's token unless ``public`` (for what holds no data, such as a page's script);
        a route with a ``title`` is announced, with its address, when the server starts.
        ``/metrics``, ``/healthz`` and ``/readyz`` are the core's own.

    .. versionadded:: 0.1
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``flowscope`` command.

    :param cli: the top-level :class:`click.Group`; use ``@cli.command()``.

    .. versionadded:: 0.1
    """
