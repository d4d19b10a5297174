"""Sinks ``elasticsearch`` and ``opensearch``: Antrea JSON records bulk-indexed into daily indices."""
