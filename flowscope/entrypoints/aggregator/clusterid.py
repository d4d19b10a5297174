"""The aggregator's cluster UUID: Antrea takes its cluster's; flowscope makes one on first start and
keeps it in the data folder, so that the observation domain id and ``clusterId`` stay the same."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from flowscope.core.errors import ConfigError, ConfigIssue

FILE = "cluster-uuid"
log = logging.getLogger("flowscope.aggregator")


def cluster_uuid(data_dir: Path) -> uuid.UUID:
    """The UUID kept in ``<data_dir>/cluster-uuid``, made and written there the first time."""
    path = data_dir / FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(
            ConfigIssue("dataDir", f"cannot read {path}: {exc.strerror}; check its permissions")
        ) from None
    else:
        try:
            return uuid.UUID(text)
        except ValueError:
            raise ConfigError(
                ConfigIssue("dataDir", f"{path} holds {text[:40]!r}, not a UUID; delete it to make a new one")
            ) from None
    made = uuid.uuid4()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(f"{made}\n")
        os.replace(partial, path)
    except OSError as exc:  # the data folder's own check names the problem
        log.warning("cannot keep the cluster UUID in %s (%s); using %s for this run", path, exc.strerror, made)
    else:
        log.info("made the cluster UUID %s, kept in %s", made, path)
    return made
