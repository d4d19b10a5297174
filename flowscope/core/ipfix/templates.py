"""Templates and the template store, scoped per (transport session, observation domain).

RFC 7011 §8: on TCP/TLS, templates live as long as the session; on UDP they expire unless the
exporter refreshes them. The store can persist UDP templates to a JSON file so a restarted
collector decodes an exporter's data at once instead of dropping it until the next refresh.
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
        return {
            "id": self.template_id,
            "scope": self.scope_count,
            "fields": [[f.element_id, f.length, f.enterprise_id] for f in self.fields],
        }


Domain = dict[int, Template]


class TemplateStore:
    """Templates by (session, observation domain id, template id).

    Sessions are opaque hashable keys chosen by the transport: a TCP connection object, or a
    ``("udp", exporter_ip, exporter_port)`` tuple. Only UDP sessions (keys that are tuples starting
    with ``"udp"``) are persisted.
    """

    def __init__(self, persist_path: Path | None = None, max_templates: int = 100_000):
        self._domains: dict[tuple[Hashable, int], Domain] = {}
        self.max_templates = max_templates
        self._persist_path = persist_path
        self._lock = threading.Lock()
        self._dirty = False

    def domain(self, session: Hashable, odid: int) -> Domain:
        """The templates of one (session, domain); created empty on first use."""
        key = (session, odid)
        found = self._domains.get(key)
        if found is None:
            found = self._domains[key] = {}
        return found

    def add(self, session: Hashable, odid: int, template: Template) -> bool:
        """Store a template; returns ``True`` if it is new or differs from the stored one."""
        domain = self.domain(session, odid)
        old = domain.get(template.template_id)
        if old is None and self.count() >= self.max_templates and not self._purge_expired():
            raise IPFIXError(
                f"template {template.template_id} refused: {self.max_templates} templates are held already",
                "too_many_templates",
            )
        domain[template.template_id] = template
        changed = old is None or old.fields != template.fields or old.scope_count != template.scope_count
        if changed and _persistable(session):
            self._dirty = True
        return changed

    def withdraw(self, session: Hashable, odid: int, template_id: int | None, options: bool = False) -> int:
        """Remove one template, or all data (or options) templates when ``template_id`` is None."""
        domain = self.domain(session, odid)
        if template_id is not None:
            removed = 1 if domain.pop(template_id, None) is not None else 0
        else:
            doomed = [tid for tid, t in domain.items() if t.is_options == options]
            for tid in doomed:
                del domain[tid]
            removed = len(doomed)
        if removed and _persistable(session):
            self._dirty = True
        return removed

    def drop_session(self, session: Hashable) -> None:
        """Forget every template of a session (a TCP or TLS connection closed)."""
        for key in [k for k in self._domains if k[0] == session]:
            del self._domains[key]

    def count(self) -> int:
        return sum(len(d) for d in self._domains.values())

    def _purge_expired(self) -> int:
        """Drop expired templates and empty domains; returns how many templates went."""
        now = time.time()
        removed = 0
        for key in list(self._domains):
            domain = self._domains[key]
            for tid in [tid for tid, t in domain.items() if t.expires < now]:
                del domain[tid]
                removed += 1
            if not domain:
                del self._domains[key]
        return removed

    # -- persistence ---------------------------------------------------------------------------

    def save(self) -> None:
        """Write UDP templates to the persistence file if they changed since the last save."""
        if self._persist_path is None or not self._dirty:
            return
        with self._lock:
            self._dirty = False
            entries = [
                {"session": list(session), "odid": odid, "templates": [t.as_json() for t in domain.values()]}
                for (session, odid), domain in self._domains.items()
                if _persistable(session) and domain
            ]
            path = self._persist_path
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "w") as out:
                json.dump({"version": 1, "domains": entries}, out)
            os.replace(tmp, path)

    def load(self, compile_template: Callable[[Template], Template]) -> int:
        """Read persisted templates; returns how many were restored. A bad file is logged and ignored."""
        path = self._persist_path
        if path is None or not path.exists():
            return 0
        try:
            data = json.loads(path.read_text())
            restored = 0
            for entry in data["domains"]:
                session = tuple(entry["session"])
                for item in entry["templates"]:
                    fields = tuple(FieldSpec(int(e), int(n), int(ent)) for e, n, ent in item["fields"])
                    template = compile_template(Template(int(item["id"]), fields, int(item["scope"])))
                    self.domain(session, int(entry["odid"]))[template.template_id] = template
                    restored += 1
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the template file %s: %s: %s", path, type(exc).__name__, exc)
            return 0
        return restored


def _persistable(session: Hashable) -> bool:
    return isinstance(session, tuple) and bool(session) and session[0] == "udp"
