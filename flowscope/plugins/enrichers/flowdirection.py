"""``flowdirection`` enricher: ``flowDirection`` as Antrea's Flow Aggregator sets it in proxy mode.

A record seen from one side only: 1 (egress) from the source node of an InterNode or ToExternal
flow, 0 (ingress) at the destination node of an InterNode or FromExternal flow, 255 otherwise.
"""

from __future__ import annotations

from flowscope.core.components import Batch, Enricher
from flowscope.core.config import OptionsModel
from flowscope.core.hookspecs import hookimpl

INGRESS, EGRESS, UNKNOWN = 0, 1, 0xFF
INTER_NODE, TO_EXTERNAL, FROM_EXTERNAL = 2, 3, 4


class FlowDirectionOptions(OptionsModel):
    pass


def flow_direction(record: dict) -> int:
    source, destination = bool(record.get("sourcePodName")), bool(record.get("destinationPodName"))
    kind = record.get("flowType")
    if kind == INTER_NODE and source and not destination:
        return EGRESS
    if kind == INTER_NODE and destination and not source:
        return INGRESS
    if kind == TO_EXTERNAL and source:
        return EGRESS
    if kind == FROM_EXTERNAL and destination:
        return INGRESS
    return UNKNOWN


class FlowDirectionEnricher(Enricher):
    """Sets ``flowDirection`` on every record."""

    Options = FlowDirectionOptions

    def enrich(self, records: Batch) -> Batch:
        for record in records:
            record["flowDirection"] = flow_direction(record)
        return records


@hookimpl
def register_enrichers(register):
    register("flowdirection", FlowDirectionEnricher)
