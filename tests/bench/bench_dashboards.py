"""Benchmark: how long each dashboard takes to answer over 1,000,000 stored flows.

A flowscope pipeline with a clickhouse sink on embedded ClickHouse (chDB) and the web UI serves the
dashboards; the flows (200 Pods in 10 namespaces on 4 Nodes, Services, policies, external
addresses, over the last hour) are generated inside ClickHouse, through Antrea's schema and its
views. Each dashboard's data route is asked for the last hour, five times; the median and the
range of the whole answer (every panel, over HTTPS, token checked) are printed, next to the target
of 2 s.

    .venv/bin/python tests/bench/bench_dashboards.py [--flows N]
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import clickhouse_connect

from flowscope.core.pipeline import Pipeline
from flowscope.core.pipelineconfig import validate_config
from flowscope.core.plugins import load_plugins
from flowscope.plugins.web.dashboards import DASHBOARDS

TARGET = 2.0
GENERATE = """
INSERT INTO flows (flowStartSeconds, flowEndSeconds, flowEndSecondsFromSourceNode,
  flowEndSecondsFromDestinationNode, flowEndReason, sourceIP, destinationIP, sourceTransportPort,
  destinationTransportPort, protocolIdentifier, packetTotalCount, octetTotalCount, packetDeltaCount,
  octetDeltaCount, reversePacketTotalCount, reverseOctetTotalCount, reversePacketDeltaCount,
  reverseOctetDeltaCount, sourcePodName, sourcePodNamespace, sourceNodeName, destinationPodName,
  destinationPodNamespace, destinationNodeName, destinationClusterIP, destinationServicePort,
  destinationServicePortName, ingressNetworkPolicyName, ingressNetworkPolicyNamespace,
  ingressNetworkPolicyRuleName, ingressNetworkPolicyRuleAction, ingressNetworkPolicyType,
  egressNetworkPolicyName, egressNetworkPolicyNamespace, egressNetworkPolicyRuleName,
  egressNetworkPolicyRuleAction, egressNetworkPolicyType, tcpState, flowType, sourcePodLabels,
  destinationPodLabels, throughput, reverseThroughput, throughputFromSourceNode,
  throughputFromDestinationNode, reverseThroughputFromSourceNode, reverseThroughputFromDestinationNode,
  clusterUUID, egressName, egressIP, egressNodeName)
SELECT
  toDateTime({now:UInt32} - 3600 + number % 3600 - 60), toDateTime({now:UInt32} - 3600 + number % 3600),
  toDateTime({now:UInt32} - 3600 + number % 3600), toDateTime({now:UInt32} - 3600 + number % 3600), 2,
  concat('10.244.', toString(number % 4), '.', toString(number % 200)),
  if(number % 5 = 0, concat('93.184.', toString(number % 7), '.1'), concat('10.244.', toString(number % 3), '.9')),
  30000 + number % 20000, 8080, 6, 100, 100000, 10, 1000 + number % 1000, 50, 5000, 5, 500,
  concat('app-', toString(number % 200)), concat('ns-', toString(number % 10)), concat('node-', toString(number % 4)),
  if(number % 5 = 0, '', concat('app-', toString((number + 7) % 200))),
  if(number % 5 = 0, '', concat('ns-', toString((number + 3) % 10))),
  if(number % 5 = 0, '', concat('node-', toString((number + 1) % 4))),
  if(number % 3 = 0, '10.96.0.10', ''), if(number % 3 = 0, 80, 0),
  if(number % 3 = 0, concat('ns-', toString(number % 10), '/svc-', toString(number % 20), ':http'), ''),
  if(number % 4 = 0, 'allow-web', ''), if(number % 4 = 0, concat('ns-', toString(number % 10)), ''), '',
  if(number % 4 = 0, 1, 0), 0,
  if(number % 9 = 0, 'deny-egress', ''), if(number % 9 = 0, concat('ns-', toString(number % 10)), ''), '',
  if(number % 9 = 0, 2, 0), 0, 'ESTABLISHED', if(number % 5 = 0, 3, 1 + number % 2), '', '',
  8000 + number % 8000, 4000, 8000, 8000, 4000, 4000, 'bench', '', '', ''
FROM numbers({count:UInt64})
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flowscope-bench-dashboards-"))
    engine = work / "clickhouse"
    plugins = load_plugins()
    spec = {
        "sources": [{"type": "jsonl", "path": str(work / "empty.jsonl"), "follow": True}],
        "sinks": [{"type": "clickhouse", "databaseURL": f"chdb://{engine}", "commitInterval": "1s"}],
        "apiAddress": "127.0.0.1:0",
        "dataDir": str(work),
    }
    (work / "empty.jsonl").write_text("")
    pipeline = Pipeline(validate_config(spec, plugins), plugins)
    pipeline.start()
    try:
        while not pipeline.sinks[0].ready:  # the sink makes the schema when it opens
            time.sleep(0.1)
        now = int(time.time())
        print(f"generating {args.flows:,} flows in ClickHouse ...", flush=True)
        started = time.perf_counter()
        writer = clickhouse_connect.get_client(interface="chdb", path=str(engine))  # the same engine, in-process
        writer.command(GENERATE, parameters={"now": now, "count": args.flows})
        print(f"  {time.perf_counter() - started:.1f} s (the views are filled as the rows go in)")
        token = (work / "api-token").read_text().strip()
        context = ssl.create_default_context(cafile=str(work / "certs" / "ca.crt"))
        context.check_hostname = False
        print(f"{'dashboard':<18} {'median s':>9} {'range s':>15}  panels  rows  (target {TARGET:g} s)")
        worst = 0.0
        for dashboard in DASHBOARDS:
            url = f"https://127.0.0.1:{pipeline.api.port}/ui/api/data/{dashboard.id}?from={now - 3600}&to={now}"
            times, rows = [], 0
            for _ in range(args.rounds):
                request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
                began = time.perf_counter()
                with urllib.request.urlopen(request, context=context, timeout=120) as answer:
                    body = json.loads(answer.read())
                times.append(time.perf_counter() - began)
                errors = [p["error"] for p in body["panels"].values() if "error" in p]
                if errors:
                    print(f"{dashboard.id}: {errors[0]}")
                    return 1
                rows = sum(len(p["rows"]) for p in body["panels"].values())
            median = statistics.median(times)
            worst = max(worst, median)
            print(
                f"{dashboard.id:<18} {median:>9.2f} {min(times):>7.2f}-{max(times):<7.2f}"
                f"  {len(dashboard.panels):>6}  {rows:>4}"
            )
        verdict = "met" if worst <= TARGET else "missed"
        print(f"slowest dashboard: {worst:.2f} s over {args.flows:,} flows: target {TARGET:g} s {verdict}")
        return 0
    finally:
        pipeline.stop()
        pipeline.wait(30)


if __name__ == "__main__":
    sys.exit(main())
