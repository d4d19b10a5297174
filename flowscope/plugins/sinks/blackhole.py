"""``blackhole`` sink: counts records and discards them (benchmarks, dry runs)."""

from __future__ import annotations

from flowscope.core.components import Batch, Sink
from flowscope.core.config import OptionsModel
from flowscope.core.hookspecs import hookimpl


class BlackholeOptions(OptionsModel):
    pass


class BlackholeSink(Sink):
    """Accepts every batch and keeps nothing; ``flowscope_records_emitted_total`` counts them."""

    Options = BlackholeOptions

    def write(self, records: Batch) -> None:
        del records


@hookimpl
def register_sinks(register):
    register("blackhole", BlackholeSink)
