"""Keeps an :class:`Inventory` in sync with a Kubernetes API server: list, then watch, per kind.

One daemon thread per kind runs the reflector loop of client-go with the official ``kubernetes``
client: LIST (in pages) → ``Inventory.replace`` → WATCH from the list's resourceVersion, with
bookmarks, applying every event and remembering the resourceVersion of each (BOOKMARKs included) →
resume the watch from there whenever it ends. A 410 Gone (the resume point was compacted away)
lists again; any other failure reconnects with exponential backoff (0.5 s doubling to 30 s), each
failure logged and counted. One kind that fails (say, RBAC forbids NetworkPolicies) does not hold
up the others.

Objects reach the inventory as the plain dicts of the API's JSON (camelCase keys, as in YAML):
lists are read with ``_preload_content=False``, watch events as their ``raw_object``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge

from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.plugins.enrichers.kubernetes.inventory import KINDS, Inventory, log

try:
    import kubernetes
    import kubernetes.client
    import kubernetes.config
    import kubernetes.watch
    from kubernetes.client.exceptions import ApiException
except ImportError:  # the optional extra flowscope[kubernetes]
    kubernetes = None

    class ApiException(Exception):  # type: ignore[no-redef]  # never raised without the client
        status = 0


@dataclass(frozen=True)
class Resource:
    """Where the API serves one kind, and what RBAC calls it."""

    api: str  # the kubernetes.client class
    method: str  # its list-at-cluster-scope method
    group: str  # the API group ("" is the core group)
    plural: str  # the resource name in RBAC rules and URLs


RESOURCES = {
    "Namespace": Resource("CoreV1Api", "list_namespace", "", "namespaces"),
    "Node": Resource("CoreV1Api", "list_node", "", "nodes"),
    "Pod": Resource("CoreV1Api", "list_pod_for_all_namespaces", "", "pods"),
    "Service": Resource("CoreV1Api", "list_service_for_all_namespaces", "", "services"),
    "EndpointSlice": Resource(
        "DiscoveryV1Api", "list_endpoint_slice_for_all_namespaces", "discovery.k8s.io", "endpointslices"
    ),
    "NetworkPolicy": Resource(
        "NetworkingV1Api", "list_network_policy_for_all_namespaces", "networking.k8s.io", "networkpolicies"
    ),
}
CONNECT_TIMEOUT = 10.0  # seconds to establish a connection to the API server
LIST_TIMEOUT = 120.0  # seconds of silence tolerated while reading one page of a list
READ_SLACK = 15.0  # a watch that stays silent this long past its timeoutSeconds is taken for dead
SHORT_WATCH = 1.0  # a watch that ends sooner than this without an event is a failure (no hot loop)
HEALTHY_AFTER = 5.0  # a watch that ran this long before failing was healthy: the backoff starts over


class WatchMetrics:
    """The watcher's Prometheus collectors, shared by every watcher of one registry."""

    def __init__(self, registry: CollectorRegistry):
        self.restarts = Counter(
            "flowscope_kubernetes_watch_restarts",
            "Lists or watches of the Kubernetes API started again after a failure, by reason "
            "(expired: 410 Gone, listed again; forbidden: 403; unauthorized: 401; error: anything else).",
            ["kind", "reason"],
            registry=registry,
        )
        self.events = Counter(
            "flowscope_kubernetes_events",
            "Watch events received from the Kubernetes API, by type (ADDED, MODIFIED, DELETED, BOOKMARK).",
            ["kind", "type"],
            registry=registry,
        )
        self.synced = Gauge(
            "flowscope_kubernetes_synced",
            "1 while the inventory of a kind is in sync with the Kubernetes API (listed, watch healthy), else 0.",
            ["kind"],
            registry=registry,
        )


_metrics: weakref.WeakKeyDictionary[CollectorRegistry, WatchMetrics] = weakref.WeakKeyDictionary()
_metrics_lock = threading.Lock()


def watch_metrics(registry: CollectorRegistry) -> WatchMetrics:
    with _metrics_lock:
        found = _metrics.get(registry)
        if found is None:
            found = _metrics[registry] = WatchMetrics(registry)
        return found


class Expired(Exception):
    """The resume point is gone (410): list again."""


class ShortWatch(Exception):
    """A watch ended at once without an event: the server is not serving it properly."""


class Watcher:
    """Lists and watches ``kinds`` on the API server of a kubeconfig (or in-cluster), into ``inventory``."""

    backoff_initial = 0.5  # seconds before the first retry after a failure; doubles per failure
    backoff_max = 30.0
    page_size = 500  # objects per page of a list (limit/continue)

    def __init__(
        self,
        inventory: Inventory,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        in_cluster: bool = False,
        kinds: Iterable[str] = KINDS,
        sync_timeout: float = 30.0,
        logger: logging.Logger | None = None,
        metrics: CollectorRegistry | None = None,
        watch_timeout: int = 10,
    ):
        if kubernetes is None:
            raise ConfigError(
                ConfigIssue("kubernetes", "the kubernetes package is not installed; install flowscope[kubernetes]")
            )
        self.inventory = inventory
        self.kinds = tuple(dict.fromkeys(kinds))
        unknown = [kind for kind in self.kinds if kind not in RESOURCES]
        if unknown:
            raise ConfigError(
                ConfigIssue("kinds", f"unknown kind(s) {', '.join(map(repr, unknown))}; use {', '.join(RESOURCES)}")
            )
        self.sync_timeout = sync_timeout
        self.watch_timeout = max(1, int(watch_timeout))  # timeoutSeconds of each watch request
        self.log = logger or log
        self._metrics = watch_metrics(metrics if metrics is not None else CollectorRegistry())
        configuration, self.identity = _configuration(kubeconfig, context, in_cluster)
        # one connection per watch plus a list or two, without urllib3 discarding connections
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, len(self.kinds) + 4)
        if configuration.retries is None:
            configuration.retries = 0  # no silent urllib3 retries: the backoff here retries, logged and counted
        self.host = configuration.host
        self._client = kubernetes.client.ApiClient(configuration)
        self._stopping = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._watches: dict[str, Any] = {}  # kind -> its kubernetes.watch.Watch, for stop()
        self._listed = {kind: threading.Event() for kind in self.kinds}
        self._all_listed = threading.Event()
        self._versions: dict[str, str] = {}  # kind -> resourceVersion to resume from
        self._failures = dict.fromkeys(self.kinds, 0)  # consecutive failures, for the backoff
        self._errors: dict[str, str] = {}  # kind -> the last failure, for wait_ready's report
        for kind in self.kinds:
            self._metrics.synced.labels(kind=kind).set(0)
        if not self.kinds:
            self._all_listed.set()

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start one daemon thread per kind; returns at once (see :meth:`wait_ready`)."""
        if self._stopping.is_set():
            raise RuntimeError("a stopped Watcher cannot be started again; make a new one")
        if self._threads:
            return
        for kind in self.kinds:
            thread = threading.Thread(target=self._run, args=(kind,), name=f"flowscope-k8s-{kind}", daemon=True)
            self._threads[kind] = thread
            thread.start()
        self.log.info("watching %s on %s with %s", ", ".join(self.kinds), self.host, self.identity)

    def stop(self, timeout: float = 5.0) -> None:
        """End the threads: open watches are cut at once; a list in progress is waited for up to ``timeout``."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        threads = list(self._threads.values())
        while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline:
            for watch in list(self._watches.values()):
                watch.stop()  # shuts the socket down: the blocked read returns
            for thread in threads:
                thread.join(0.02)
        busy = [thread.name for thread in threads if thread.is_alive()]
        if busy:
            self.log.warning("Kubernetes watcher threads still busy after %.1fs: %s", timeout, ", ".join(busy))
        for kind in self.kinds:
            self._metrics.synced.labels(kind=kind).set(0)
        self._client.close()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until every kind was listed once (default: ``sync_timeout``); sets ``inventory.ready``."""
        if self._all_listed.wait(self.sync_timeout if timeout is None else timeout):
            self.inventory.ready.set()
            return True
        missing = [kind for kind in self.kinds if not self._listed[kind].is_set()]
        reasons = "; ".join(f"{kind}: {self._errors.get(kind, 'no answer yet')}" for kind in missing)
        self.log.warning("the Kubernetes inventory is incomplete: not listed yet: %s", reasons)
        return False

    @property
    def synced(self) -> dict[str, bool]:
        """Whether each kind has been listed at least once."""
        return {kind: event.is_set() for kind, event in self._listed.items()}

    @property
    def resource_versions(self) -> dict[str, str]:
        """The resourceVersion each kind resumes its watch from."""
        return dict(self._versions)

    # -- one kind ----------------------------------------------------------------------------------

    def _run(self, kind: str) -> None:
        resource = RESOURCES[kind]
        list_fn = getattr(getattr(kubernetes.client, resource.api)(self._client), resource.method)
        watch = self._watches[kind] = kubernetes.watch.Watch(return_type="object")  # events as plain dicts
        while not self._stopping.is_set():
            version = self._versions.get(kind)  # where the last watch got to; None: list first
            verb = "list" if version is None else "watch"
            try:
                if version is None:
                    version = self._list(kind, list_fn)
                    verb = "watch"
                self._watch(kind, watch, list_fn, version)
            except Exception as exc:
                if self._stopping.is_set():
                    break
                reason = self._reason(exc)
                # a first 410 lists again at once; more failures in a row (a 410 right after a list too) back off
                at_once = reason == "expired" and self._failures[kind] == 0
                if reason == "expired":
                    self._versions.pop(kind, None)
                self._failures[kind] += 1
                delay = 0.0 if at_once else self._backoff(self._failures[kind])
                self._report(kind, verb, reason, exc, delay)
                self._metrics.restarts.labels(kind=kind, reason=reason).inc()
                self._metrics.synced.labels(kind=kind).set(0)
                self._stopping.wait(delay)

    def _backoff(self, failures: int) -> float:
        return min(self.backoff_max, self.backoff_initial * 2 ** min(failures - 1, 30))

    def _healthy(self, kind: str) -> None:
        self._failures[kind] = 0
        self._errors.pop(kind, None)
        self._metrics.synced.labels(kind=kind).set(1)

    def _list(self, kind: str, list_fn: Callable[..., Any]) -> str:
        """List every object of ``kind`` (page by page), replace the inventory's; the list's resourceVersion."""
        items: list[Any] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size, "_request_timeout": (CONNECT_TIMEOUT, LIST_TIMEOUT)}
            if token:
                kwargs["_continue"] = token
            response = list_fn(_preload_content=False, **kwargs)
            try:
                body = json.loads(response.data)
            finally:
                response.release_conn()
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise ValueError(f"the API server answered the list of {kind} with no items list")
            items.extend(body["items"])
            metadata = body.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
            if self._stopping.is_set():
                raise InterruptedError("stopped while listing")
        version = metadata.get("resourceVersion")
        if not version:
            raise ValueError(f"the API server answered the list of {kind} without a resourceVersion")
        for item in items:
            if isinstance(item, dict):
                item.setdefault("kind", kind)
        self._replace(kind, items)
        self._versions[kind] = version
        self._metrics.synced.labels(kind=kind).set(1)
        self._errors.pop(kind, None)
        self.log.debug("listed %d %s objects at resourceVersion %s", len(items), kind, version)
        self._listed[kind].set()
        if all(event.is_set() for event in self._listed.values()):
            self._all_listed.set()
            self.inventory.ready.set()
        return version

    def _replace(self, kind: str, items: list[Any]) -> None:
        self.inventory.replace(kind, items)  # unusable objects are skipped, counted and logged there

    def _watch(self, kind: str, watch: Any, list_fn: Callable[..., Any], version: str) -> None:
        """Watch from ``version`` until the server ends the watch, recording the version to resume from."""
        started, count = time.monotonic(), 0
        try:
            if self._stopping.is_set():
                return
            stream = watch.stream(
                list_fn,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,
                _request_timeout=(CONNECT_TIMEOUT, self.watch_timeout + READ_SLACK),
            )
            for event in stream:
                if not isinstance(event, dict):
                    continue  # a line that is not JSON
                kind_of_event, raw = event.get("type"), event.get("raw_object")
                if kind_of_event == "ERROR":
                    _raise_status(raw)
                if not isinstance(raw, dict):
                    continue
                if kind_of_event in ("ADDED", "MODIFIED", "DELETED"):
                    raw.setdefault("kind", kind)
                    self.inventory.apply(kind, kind_of_event, raw)  # an unusable object is skipped there
                elif kind_of_event != "BOOKMARK":
                    continue
                self._metrics.events.labels(kind=kind, type=kind_of_event).inc()
                new_version = (raw.get("metadata") or {}).get("resourceVersion")
                if new_version:
                    self._versions[kind] = new_version
                if count == 0:
                    self._healthy(kind)
                count += 1
                if self._stopping.is_set():
                    watch.stop()
                    break
        except Exception:
            if time.monotonic() - started >= HEALTHY_AFTER:
                self._failures[kind] = 0
            raise
        if count == 0 and not self._stopping.is_set():
            if time.monotonic() - started < SHORT_WATCH:
                raise ShortWatch("the watch ended at once without an event")
            self._healthy(kind)

    # -- failures --------------------------------------------------------------------------------

    @staticmethod
    def _reason(exc: Exception) -> str:
        if isinstance(exc, Expired):
            return "expired"
        status = getattr(exc, "status", None) if isinstance(exc, ApiException) else None
        return {410: "expired", 401: "unauthorized", 403: "forbidden"}.get(status, "error")

    def _report(self, kind: str, verb: str, reason: str, exc: Exception, delay: float) -> None:
        resource = RESOURCES[kind]
        group = f'API group "{resource.group}"' if resource.group else "the core API group"
        retry = f"retrying in {delay:.1f}s" if delay else "retrying now"
        said = _server_message(exc)
        if reason == "expired":
            self._errors[kind] = "resourceVersion expired"
            self.log.info("%s watch expired (410 Gone: %s): listing %s again", kind, said, resource.plural)
            return
        if reason == "forbidden":
            message = (
                f"forbidden: {verb} {resource.plural} at cluster scope; grant get/list/watch on {resource.plural} "
                f"({group}) to {self.identity}, with a ClusterRole and ClusterRoleBinding"
            )
            self._errors[kind] = message
            self.log.error("%s (the API server said: %s); %s", message, said, retry)
            return
        if reason == "unauthorized":
            message = (
                f"unauthorized: the API server at {self.host} rejected the credentials of {self.identity} "
                f"to {verb} {resource.plural}: they are invalid or have expired; renew them "
                "(a new token or client certificate, or `kubectl get pods` once to refresh them)"
            )
            self._errors[kind] = message
            self.log.error("%s (the API server said: %s); %s", message, said, retry)
            return
        message = f"{verb} {resource.plural} on {self.host} failed: {said}"
        self._errors[kind] = message
        self.log.warning("%s; %s", message, retry)


def _raise_status(raw: Any) -> None:
    """An ERROR watch event: its Status as an exception."""
    status = raw if isinstance(raw, dict) else {}
    code = status.get("code")
    text = f"{status.get('reason', '')}: {status.get('message', '')}"
    if code == 410:
        raise Expired(text)
    raise ApiException(status=code, reason=text)


def _server_message(exc: Exception) -> str:
    """What went wrong, in one line: the Status message of the API server, or the connection error."""
    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "").get("message")
        except (ValueError, AttributeError):
            message = None
        return message or (exc.reason if exc.body is None and exc.reason else f"HTTP {exc.status} {exc.reason or ''}")
    cause = getattr(exc, "reason", None)  # urllib3's MaxRetryError: the underlying connection error
    if isinstance(cause, Exception):
        exc = cause
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _configuration(kubeconfig: str | None, context: str | None, in_cluster: bool) -> tuple[Any, str]:
    """The client configuration and a description of whose credentials it carries; ConfigError if unusable."""
    configuration = kubernetes.client.Configuration()
    if in_cluster:
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException as exc:
            raise ConfigError(
                ConfigIssue(
                    "in_cluster",
                    f"no in-cluster service account ({exc}); run flowscope in a Pod, or set kubeconfig instead",
                )
            ) from None
        return configuration, "the service account of this Pod"
    key = "kubeconfig"
    if kubeconfig:
        paths = [os.path.expanduser(kubeconfig)]
    elif os.environ.get("KUBECONFIG"):
        key = "KUBECONFIG"
        paths = [os.path.expanduser(p) for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    else:
        paths = [os.path.expanduser("~/.kube/config")]
    readable, contexts = [], []
    for path in paths:
        try:
            with open(path, "rb") as file:
                document = yaml.safe_load(file)
        except FileNotFoundError:
            if kubeconfig:
                raise ConfigError(
                    ConfigIssue(
                        key,
                        f"{path!r} does not exist; give the kubeconfig file of the cluster (the one kubectl uses), "
                        "or run flowscope in a Pod of the cluster",
                    )
                ) from None
            continue
        except OSError as exc:
            raise ConfigError(ConfigIssue(key, f"cannot read {path!r}: {exc.strerror or exc}")) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(ConfigIssue(key, f"{path!r} is not valid YAML{where}")) from None
        if not isinstance(document, dict):
            raise ConfigError(
                ConfigIssue(key, f"{path!r} is not a kubeconfig (a mapping with clusters, users, contexts)")
            )
        readable.append(path)
        contexts += [c.get("name") for c in document.get("contexts") or [] if isinstance(c, dict)]
    if not readable:
        where = " or ".join(map(repr, paths))
        raise ConfigError(
            ConfigIssue(key, f"no kubeconfig file at {where}; set kubeconfig to the cluster's, or run in a Pod")
        )
    names = os.pathsep.join(readable)
    if context is not None and context not in contexts:
        known = ", ".join(repr(c) for c in contexts) or "none"
        raise ConfigError(ConfigIssue("context", f"no context {context!r} in {names!r} (its contexts: {known})"))
    try:
        kubernetes.config.load_kube_config(
            config_file=names, context=context, client_configuration=configuration, persist_config=False
        )
    except (kubernetes.config.ConfigException, KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = str(exc).strip("'\"") or type(exc).__name__
        raise ConfigError(ConfigIssue(key, f"{names!r} cannot be used: {detail}")) from None
    identity = f"the user of kubeconfig {names!r}" + (f" (context {context!r})" if context else "")
    return configuration, identity
