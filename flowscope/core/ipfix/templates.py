"""Templates and the template store, scoped per (transport session, observation domain).

RFC 7011 §8: on TCP/TLS, templates live as long as the session; on UDP they expire unless the
exporter refreshes them. The store can persist UDP templates to a JSON file so a restarted
collector decodes an exporter's data at once instead of dropping it until the next refresh.

The store is shared by every session of a collector (one thread each on TCP/TLS): changes and
walks over it hold its lock; looking a template up does not. Each exporter (source address) may
hold a bounded share of it, so that one sender cannot lock the others out.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowscope.core.ipfix.errors import IPFIXError

log = logging.getLogger("flowscope.ipfix.templates")

VARIABLE = 65535


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a template: element id, encoded length (65535 = variable), enterprise number."""

    element_id: int
    length: int
    enterprise_id: int = 0


@dataclass(slots=True)
class Template:
    """A template (or options template) as received, with its compiled decoder."""

    template_id: int
    fields: tuple[FieldSpec, ...]
    scope_count: int = 0  # > 0 for options templates
    decode: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    min_length: int = 0  # bytes of the shortest possible record
    unknown: int = 0  # fields whose element the registry does not know
    expires: float = float("inf")

    @property
    def is_options(self) -> bool:
        return self.scope_count > 0

    def as_json(self) -> dict[str, Any]:
        saved: dict[str, Any] = {
            "id": self.template_id,
            "scope": self.scope_count,
            "fields": [[f.element_id, f.length, f.enterprise_id] for f in self.fields],
        }
        if self.expires != float("inf"):
            saved["expires"] = self.expires
        return saved


Domain = dict[int, Template]
_EMPTY: Domain = {}  # what a domain without templates reads as; never written to


def exporter_of(session: Hashable) -> str:
    """The exporter (source address) of a session: ``("udp", ip, port)``, or an object with ``exporter``."""
    if isinstance(session, tuple) and len(session) > 1:
        return str(session[1])
    return str(getattr(session, "exporter", session))


class TemplateStore:
    """Templates by (session, observation domain id, template id).

    Sessions are opaque hashable keys chosen by the transport: a TCP connection object, or a
    ``("udp", exporter_ip, exporter_port)`` tuple. Only UDP sessions (keys that are tuples starting
    with ``"udp"``) are persisted, with the time each template expires.

    :param max_templates: templates held at most, over every exporter.
    :param max_per_exporter: templates one exporter (source address) may hold.
    """

    def __init__(self, persist_path: Path | None = None, max_templates: int = 100_000, max_per_exporter: int = 1_000):
        self._domains: dict[tuple[Hashable, int], Domain] = {}
        self._sessions: dict[Hashable, set[int]] = {}  # the domains of each session, to drop them
        self._per_exporter: dict[str, int] = {}
        self._count = 0
        self.max_templates = max_templates
        self.max_per_exporter = max_per_exporter
        self._persist_path = persist_path
        self._lock = threading.RLock()
        self.dirty_since: float | None = None  # when UDP templates first changed after the last save (monotonic)

    @property
    def dirty(self) -> bool:
        """UDP templates changed since the last save."""
        return self.dirty_since is not None

    def _mark_dirty(self) -> None:
        if self.dirty_since is None:
            self.dirty_since = time.monotonic()

    def domain(self, session: Hashable, odid: int) -> Domain:
        """The templates of one (session, domain), for lookups; an empty one is not created."""
        return self._domains.get((session, odid), _EMPTY)

    @property
    def by_key(self) -> dict[tuple[Hashable, int], Domain]:
        """Every domain's templates by (session, observation domain id): for lookups only, never changed."""
        return self._domains

    def count(self) -> int:
        """Templates held."""
        return self._count

    def domains(self) -> int:
        """(session, domain) pairs with templates."""
        return len(self._domains)

    def add(self, session: Hashable, odid: int, template: Template) -> bool:
        """Store a template; returns ``True`` if it is new or differs from the stored one.

        :raises IPFIXError: ``too_many_templates`` when the store, or the exporter's share, is full.
        """
        key = (session, odid)
        with self._lock:
            domain = self._domains.get(key)
            old = domain.get(template.template_id) if domain is not None else None
            if old is None:
                exporter = exporter_of(session)
                self._make_room(exporter, template.template_id)
                if domain is None:
                    domain = self._domains[key] = {}
                    self._sessions.setdefault(session, set()).add(odid)
                self._count += 1
                self._per_exporter[exporter] = self._per_exporter.get(exporter, 0) + 1
            domain[template.template_id] = template
            changed = old is None or old.fields != template.fields or old.scope_count != template.scope_count
            if _persistable(session) and (changed or old.expires != template.expires):
                self._mark_dirty()
            return changed

    def _make_room(self, exporter: str, template_id: int) -> None:
        full = self._per_exporter.get(exporter, 0) >= self.max_per_exporter or self._count >= self.max_templates
        if full:
            self.purge_expired(time.time())
        if self._per_exporter.get(exporter, 0) >= self.max_per_exporter:
            raise IPFIXError(
                f"template {template_id} refused: exporter {exporter} holds {self.max_per_exporter} templates "
                "already (maxTemplatesPerExporter)",
                "too_many_templates",
            )
        if self._count >= self.max_templates:
            raise IPFIXError(
                f"template {template_id} refused: {self.max_templates} templates are held already (maxTemplates)",
                "too_many_templates",
            )

    def withdraw(self, session: Hashable, odid: int, template_id: int | None, options: bool = False) -> int:
        """Remove one template, or all data (or options) templates when ``template_id`` is None."""
        with self._lock:
            domain = self._domains.get((session, odid))
            if domain is None:
                return 0
            if template_id is not None:
                doomed = [template_id] if template_id in domain else []
            else:
                doomed = [tid for tid, t in domain.items() if t.is_options == options]
            self._remove(session, odid, domain, doomed)
            if doomed and _persistable(session):
                self._mark_dirty()
            return len(doomed)

    def drop_session(self, session: Hashable) -> None:
        """Forget every template of a session (a TCP or TLS connection closed)."""
        with self._lock:
            for odid in self._sessions.get(session, set()).copy():
                domain = self._domains[(session, odid)]
                self._remove(session, odid, domain, list(domain))

    def purge_expired(self, now: float) -> int:
        """Drop the templates that expired before ``now``; returns how many went."""
        removed = 0
        with self._lock:
            for (session, odid), domain in list(self._domains.items()):
                doomed = [tid for tid, t in domain.items() if t.expires < now]
                if doomed:
                    self._remove(session, odid, domain, doomed)
                    removed += len(doomed)
                    if _persistable(session):
                        self._mark_dirty()
        return removed

    def _remove(self, session: Hashable, odid: int, domain: Domain, template_ids: list[int]) -> None:
        """Remove templates of one domain (holding the lock); an emptied domain goes too."""
        if not template_ids:
            return
        exporter = exporter_of(session)
        for template_id in template_ids:
            del domain[template_id]
        self._count -= len(template_ids)
        left = self._per_exporter[exporter] - len(template_ids)
        if left:
            self._per_exporter[exporter] = left
        else:
            del self._per_exporter[exporter]
        if not domain:
            del self._domains[(session, odid)]
            odids = self._sessions[session]
            odids.discard(odid)
            if not odids:
                del self._sessions[session]

    # -- persistence ---------------------------------------------------------------------------

    def save(self) -> None:
        """Write UDP templates to the persistence file if they changed since the last save."""
        if self._persist_path is None or not self.dirty:
            return
        with self._lock:
            self.dirty_since = None
            entries = [
                {"session": list(session), "odid": odid, "templates": [t.as_json() for t in domain.values()]}
                for (session, odid), domain in self._domains.items()
                if _persistable(session)
            ]
        path = self._persist_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump({"version": 2, "domains": entries}, out)
        os.replace(tmp, path)

    def load(self, compile_template: Callable[[Template], Template], lifetime: float | None = None) -> int:
        """Read persisted templates that have not expired; returns how many were restored.

        A template saved without its expiry lives ``lifetime`` seconds from now. A bad file is
        logged and ignored.
        """
        path = self._persist_path
        if path is None or not path.exists():
            return 0
        now = time.time()
        restored = 0
        try:
            data = json.loads(path.read_text())
            for entry in data["domains"]:
                session = tuple(entry["session"])
                for item in entry["templates"]:
                    expires = float(item.get("expires", now + lifetime if lifetime is not None else float("inf")))
                    if expires <= now:
                        continue
                    fields = tuple(FieldSpec(int(e), int(n), int(ent)) for e, n, ent in item["fields"])
                    template = compile_template(Template(int(item["id"]), fields, int(item["scope"])))
                    template.expires = expires
                    self.add(session, int(entry["odid"]), template)
                    restored += 1
        except (OSError, ValueError, KeyError, TypeError, IPFIXError) as exc:
            log.warning("ignoring the rest of the template file %s: %s: %s", path, type(exc).__name__, exc)
        self.dirty_since = None
        return restored


def _persistable(session: Hashable) -> bool:
    return isinstance(session, tuple) and bool(session) and session[0] == "udp"
