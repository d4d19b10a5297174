"""Plugin manager: finds plugins through entry points and collects what they register.

Plugins shipped in the ``flowscope`` distribution itself are built-ins: they load through the same
entry-point group but are not subject to the allow-list. ``FLOWSCOPE_PLUGINS`` (or the config key
``plugins:``) is an allow-list of other plugins, by entry-point or distribution name;
``FLOWSCOPE_DISABLED_PLUGINS`` blocks plugins, built-ins included.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from flowscope.core import hookspecs
from flowscope.core.components import Enricher, Sink, Source
from flowscope.core.config import INSTANCE_KEYS
from flowscope.core.elements import ElementRegistry
from flowscope.core.errors import PluginError
from flowscope.core.flowtable import TableConfig
from flowscope.core.http import CORE_PATHS, Route
from flowscope.core.sinkrunner import RUNTIME_KEYS

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
ALLOW_ENV = "FLOWSCOPE_PLUGINS"
DISABLE_ENV = "FLOWSCOPE_DISABLED_PLUGINS"

# kind → (hook name, method every registered class must have)
COMPONENT_KINDS: dict[str, tuple[str, type, str]] = {
    "source": ("register_sources", Source, "run"),
    "enricher": ("register_enrichers", Enricher, "enrich"),
    "sink": ("register_sinks", Sink, "write"),
}


@dataclass
class PluginInfo:
    """One loaded plugin and what it registered."""

    name: str
    package: str
    version: str
    module: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    types: dict[str, list[str]] = field(
        default_factory=lambda: {
            "sources": [],
            "enrichers": [],
            "sinks": [],
            "bundles": [],
            "tableModes": [],
            "routes": [],
        }
    )
    elements: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "module": self.module,
            "builtin": self.builtin,
            "hooks": self.hooks,
            **self.types,
            "elements": self.elements,
        }


@dataclass
class Plugins:
    """Everything the loaded plugins registered."""

    manager: pluggy.PluginManager
    elements: ElementRegistry
    components: dict[str, dict[str, type]]
    bundles: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]
    info: dict[str, PluginInfo]
    origins: dict[tuple[str, str], str]
    allow: list[str] | None = None
    table_modes: dict[str, type] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)

    def component(self, kind: str, type_name: str) -> type | None:
        return self.components[kind].get(type_name)

    def origin(self, kind: str, type_name: str) -> str:
        return self.origins.get((kind, type_name), "")


def parse_plugin_list(text: str | None) -> list[str] | None:
    """``"a, b"`` → ``["a", "b"]``; unset → ``None`` (no restriction)."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def load_plugins(
    allow: list[str] | None = None,
    *,
    extra: Iterable[object] = (),
    entry_points: bool = True,
    disabled: list[str] | None = None,
) -> Plugins:
    """Load plugins and collect their registrations.

    :param allow: names of non-built-in plugins to load (entry-point or distribution names);
        ``None`` loads all. ``FLOWSCOPE_PLUGINS`` overrides it when set.
    :param extra: plugin modules or objects registered directly (tests, one-off plugins).
    :param entry_points: find plugins through the ``flowscope`` entry-point group.
    :param disabled: plugins never to load; ``FLOWSCOPE_DISABLED_PLUGINS`` adds to it.
    """
    env_allow = parse_plugin_list(os.environ.get(ALLOW_ENV))
    if env_allow is not None:
        allow = env_allow
    blocked = set(disabled or []) | set(parse_plugin_list(os.environ.get(DISABLE_ENV)) or [])

    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    info: dict[str, PluginInfo] = {}
    if entry_points:
        _load_entry_points(manager, info, allow, blocked)
    for plugin in extra:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        _register(manager, plugin, name)
        info[name] = PluginInfo(name, "", "", name, builtin=False)
    _check_pending(manager)
    return _collect(manager, info, allow)


def _load_entry_points(
    manager: pluggy.PluginManager, info: dict[str, PluginInfo], allow: list[str] | None, blocked: set[str]
) -> None:
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    allowed = None if allow is None else {_canonical(name) for name in allow}
    blocked = {_canonical(name) for name in blocked}
    for dist in importlib.metadata.distributions():
        package = dist.metadata["Name"] or ""
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or (package, ep.name) in seen:
                continue
            seen.add((package, ep.name))
            builtin = package == hookspecs.PROJECT_NAME
            found[ep.name] = package
            names = {_canonical(ep.name), _canonical(package)}
            if names & blocked:
                continue
            if allowed is not None and not builtin and not names & allowed:
                continue
            if ep.name in info:
                raise PluginError(
                    f"two plugins are both named '{ep.name}': one from package "
                    f"'{info[ep.name].package}', one from '{package}'; uninstall one of them, or block "
                    f"one with {DISABLE_ENV}"
                )
            try:
                module = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin '{ep.name}' (package {package} {dist.version}) failed to import "
                    f"{ep.value}: {type(exc).__name__}: {exc}. Fix or uninstall the package, or block it "
                    f"with {DISABLE_ENV}={ep.name}"
                ) from exc
            _register(manager, module, ep.name)
            info[ep.name] = PluginInfo(ep.name, package, dist.version, ep.value, builtin)
    if allow:
        known = {_canonical(name) for name in [*found, *found.values()]}
        missing = [name for name in allow if _canonical(name) not in known]
        if missing:
            installed = sorted(n for n, pkg in found.items() if pkg != hookspecs.PROJECT_NAME)
            raise PluginError(
                f"plugin(s) {', '.join(map(repr, missing))} selected by {ALLOW_ENV} or the 'plugins' key "
                f"are not installed; installed plugins: {', '.join(installed) or 'none'}"
            )


def _canonical(name: str) -> str:
    """Package-name normalisation (PEP 503), so ``flowscope_csv`` selects ``flowscope-csv``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _register(manager: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        manager.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{name}' is invalid: {exc}") from exc
    except ValueError as exc:
        raise PluginError(f"plugin '{name}' could not be registered: {exc}") from exc


def _check_pending(manager: pluggy.PluginManager) -> None:
    """A hook implementation with a misspelled name would otherwise be silently ignored."""
    known = list(hookspecs.__all__)
    for name, plugin in manager.list_name_plugin():
        for attr in dir(plugin):
            opts = manager.parse_hookimpl_opts(plugin, attr)
            if opts is not None and attr not in known:
                hint = difflib.get_close_matches(attr, known, n=1)
                suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
                raise PluginError(
                    f"plugin '{name}' implements unknown hook '{attr}'.{suggestion} Known hooks: {', '.join(known)}"
                )
    manager.check_pending()


def _collect(manager: pluggy.PluginManager, info: dict[str, PluginInfo], allow: list[str] | None) -> Plugins:
    elements = ElementRegistry()
    components: dict[str, dict[str, type]] = {kind: {} for kind in COMPONENT_KINDS}
    bundles: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
    table_modes: dict[str, type] = {}
    routes: list[Route] = []
    origins: dict[tuple[str, str], str] = {}

    def claim(kind: str, type_name: str, plugin_name: str) -> None:
        if not isinstance(type_name, str) or not type_name.strip():
            raise PluginError(f"plugin '{plugin_name}' registered a {kind} with an empty or non-text name")
        previous = origins.get((kind, type_name))
        if previous is not None:
            raise PluginError(
                f"{kind if kind in ('route', 'table mode') else kind + ' type'} '{type_name}' is registered by both "
                f"plugin '{previous}' and plugin "
                f"'{plugin_name}'; uninstall or block one of them with {DISABLE_ENV}"
            )
        origins[(kind, type_name)] = plugin_name

    for plugin_name, _plugin in manager.list_name_plugin():
        plugin_info = info[plugin_name]
        impls = _hookimpls(manager, plugin_name)
        plugin_info.hooks = sorted(impls)

        if "register_elements" in impls:

            def register_element(
                name: str,
                enterprise_id: int,
                element_id: int,
                type: str,
                *,
                length: int | None = None,
                uuid: bool = False,
                _origin: str = plugin_name,
            ) -> None:
                elements.register(name, enterprise_id, element_id, type, origin=_origin, length=length, uuid=uuid)
                info[_origin].elements += 1

            _call(plugin_name, impls["register_elements"], register=register_element)

        for kind, (hook_name, base, method) in COMPONENT_KINDS.items():
            if hook_name not in impls:
                continue

            def register_component(
                type_name: str,
                cls: type,
                _kind: str = kind,
                _base: type = base,
                _method: str = method,
                _origin: str = plugin_name,
            ) -> None:
                if not isinstance(cls, type) or not callable(getattr(cls, _method, None)):
                    raise PluginError(
                        f"plugin '{_origin}' registered {_kind} '{type_name}' as {cls!r}, which is not a "
                        f"class with a {_method}() method; subclass flowscope.{_base.__name__}"
                    )
                _check_option_names(_origin, _kind, type_name, cls)
                claim(_kind, type_name, _origin)
                components[_kind][type_name] = cls
                info[_origin].types[_kind + "s"].append(type_name)

            _call(plugin_name, impls[hook_name], register=register_component)

        if "register_bundles" in impls:

            def register_bundle(name: str, build: Callable[..., Any], _origin: str = plugin_name) -> None:
                if not callable(build):
                    raise PluginError(f"plugin '{_origin}' registered bundle '{name}' with a non-callable build")
                claim("bundle", name, _origin)
                bundles[name] = build
                info[_origin].types["bundles"].append(name)

            _call(plugin_name, impls["register_bundles"], register=register_bundle)

        if "register_table_modes" in impls:

            def register_table_mode(mode: str, policy: type, _origin: str = plugin_name) -> None:
                _check_table_mode(_origin, mode, policy)
                claim("table mode", mode, _origin)
                table_modes[mode] = policy
                info[_origin].types["tableModes"].append(mode)

            _call(plugin_name, impls["register_table_modes"], register=register_table_mode)

        if "register_routes" in impls:

            def register_route(
                path: str,
                handler: Callable[..., Any],
                methods: Iterable[str] = ("GET",),
                *,
                public: bool = False,
                title: str = "",
                _origin: str = plugin_name,
            ) -> None:
                route = _make_route(_origin, path, handler, methods, public, title)
                claim("route", path, _origin)
                routes.append(route)
                info[_origin].types["routes"].append(path)

            _call(plugin_name, impls["register_routes"], register=register_route)

    return Plugins(manager, elements, components, bundles, info, origins, allow, table_modes, routes)


def _check_table_mode(plugin_name: str, mode: str, policy: type) -> None:
    """A mode is a name other than ``none``, and a policy class built with ``from_config``."""
    if not isinstance(mode, str) or not mode.strip() or mode == "none":
        raise PluginError(f"plugin '{plugin_name}' registered a table mode named {mode!r}; choose another name")
    if not isinstance(policy, type) or not callable(getattr(policy, "from_config", None)):
        raise PluginError(
            f"plugin '{plugin_name}' registered table mode '{mode}' as {policy!r}, which is not a merge policy "
            "class with a from_config(options) class method"
        )
    options = getattr(policy, "Options", TableConfig)
    if not (isinstance(options, type) and issubclass(options, TableConfig)):
        raise PluginError(
            f"plugin '{plugin_name}': table mode '{mode}' has Options {options!r}; it must subclass "
            "flowscope.TableConfig, which holds the keys every mode has"
        )


def _make_route(plugin_name: str, path: str, handler: Any, methods: Iterable[str], public: bool, title: str) -> Route:
    if not callable(handler):
        raise PluginError(f"plugin '{plugin_name}' registered route {path!r} with a handler that is not callable")
    if path in CORE_PATHS:
        raise PluginError(f"plugin '{plugin_name}' registered route {path!r}, which the core serves itself")
    methods = tuple(methods) if not isinstance(methods, str) else (methods,)
    if not methods or not all(isinstance(m, str) and m.isupper() for m in methods):
        raise PluginError(
            f"plugin '{plugin_name}' registered route {path!r} with methods {methods!r}; give upper-case "
            "HTTP methods, e.g. ('GET', 'POST')"
        )
    try:
        return Route(path, handler, methods, plugin_name, bool(public), str(title))
    except ValueError as exc:
        raise PluginError(f"plugin '{plugin_name}' registered a bad route: {exc}") from None


def _check_option_names(plugin_name: str, kind: str, type_name: str, cls: type) -> None:
    """Keys the runtime handles itself cannot also be plugin options."""
    model = getattr(cls, "Options", None)
    fields = getattr(model, "model_fields", None)
    if not fields:
        return
    reserved = INSTANCE_KEYS | (RUNTIME_KEYS if kind == "sink" else set())
    taken = sorted(reserved & set(fields))
    if taken:
        raise PluginError(
            f"plugin '{plugin_name}': {kind} '{type_name}' has option(s) {', '.join(taken)}, which the runtime "
            f"handles for every {kind}; rename them (reserved: {', '.join(sorted(reserved))})"
        )


def _hookimpls(manager: pluggy.PluginManager, plugin_name: str) -> dict[str, Any]:
    """The hook implementations of one plugin, by hook name."""
    found = {}
    for hook_name in hookspecs.__all__:
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            if impl.plugin_name == plugin_name:
                found[hook_name] = impl
    return found


def _call(plugin_name: str, impl: Any, **kwargs: Any) -> None:
    """Call one plugin's hook implementation with the arguments it declares."""
    try:
        impl.function(**{name: kwargs[name] for name in impl.argnames})
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin '{plugin_name}' raised in {impl.function.__name__}: {type(exc).__name__}: {exc}"
        ) from exc


def register_commands(plugins: Plugins, cli: Any) -> None:
    """Let every plugin add subcommands to the ``flowscope`` click group."""
    for plugin_name, _plugin in plugins.manager.list_name_plugin():
        impl = _hookimpls(plugins.manager, plugin_name).get("register_commands")
        if impl is not None:
            _call(plugin_name, impl, cli=cli)
