"""The gRPC transport between flow exporters and the aggregator, as Antrea's: the ``grpc`` source (the
aggregator's end) and the ``grpc`` sink (the exporter's end), Antrea's schema (``flow.proto``) and the
code generated from it."""
