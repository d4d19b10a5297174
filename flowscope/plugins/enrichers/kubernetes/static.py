"""The inventory from a static file of Kubernetes objects (YAML, several documents, or ``kind: List``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.plugins.enrichers.kubernetes.inventory import KINDS, Inventory


def load_file(inventory: Inventory, path: str | Path, key: str = "inventory") -> int:
    """Load every object of the file; returns how many were used. Unusable objects are skipped, logged."""
    try:
        documents = list(yaml.safe_load_all(Path(path).read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(ConfigIssue(key, f"cannot read {str(path)!r}: {exc.strerror or exc}")) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(ConfigIssue(key, f"{str(path)!r} is not valid YAML{where}")) from None
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for item in _items(documents):
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind in by_kind:
            by_kind[kind].append(item)
        else:
            inventory.skip(str(kind), item, ValueError(f"kind {kind!r} in {path} is not used for flows"))
    before = inventory.skipped
    for kind in KINDS:  # namespaces and nodes first: policies and pods refer to them
        inventory.replace(kind, by_kind[kind])
    inventory.ready.set()
    return sum(len(items) for items in by_kind.values()) - (inventory.skipped - before)


def _items(documents: list[Any]):
    for document in documents:
        if document is None:
            continue
        if isinstance(document, dict) and isinstance(document.get("items"), list):
            kind = document.get("kind", "")
            item_kind = kind[:-4] if kind.endswith("List") and kind != "List" else None
            for item in document["items"]:
                if isinstance(item, dict) and item_kind and "kind" not in item:
                    item = {**item, "kind": item_kind}
                yield item
        else:
            yield document
