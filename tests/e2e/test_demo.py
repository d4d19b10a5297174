"""``flowscope demo`` as a user runs it: the cluster it builds, the flows it stores, the dashboards
that show them, and nothing left behind; and what it says when it cannot run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM, CLI, free_port, screenshot, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo's cluster needs root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed"),
]


def host_state() -> tuple[str, str, str]:
    """What the demo must leave as it found it: namespaces, links, nftables rules."""

    def show(*command: str) -> str:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    links = "\n".join(line for line in show("ip", "-o", "link").splitlines() if "fsd-" in line)
    return show("ip", "netns", "list"), links, show("nft", "list", "ruleset")


class Demo:
    """A ``flowscope demo`` (or ``up``) process and what it printed."""

    def __init__(
        self, *args: str, command: str = "demo", env: dict | None = None, user: str | None = None, netns: str = ""
    ):
        argv = [*CLI, command, *args]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def url(self) -> str:
        return next(line.split("dashboards: ", 1)[1].strip() for line in self.lines if line.startswith("dashboards: "))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(120)
        self.reader.join(10)
        return code


def query(demo: Demo, data_dir: Path, sql: str) -> list[list]:
    base, token = demo.url().split("/ui/#token=")
    context = ssl.create_default_context(cafile=str(data_dir / "certs" / "ca.crt"))
    context.check_hostname = False
    request = urllib.request.Request(
        f"{base}/clickhouse/query?" + urllib.parse.urlencode({"sql": sql}),
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, context=context, timeout=60) as answer:
        return json.loads(answer.read())["rows"]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    before = host_state()
    data_dir = tmp_path_factory.mktemp("demo")
    demo = Demo("--data-dir", str(data_dir), "--port", str(free_port()))
    try:
        wait_for(lambda: demo.said("running; Ctrl-C stops it") or demo.process.poll() is not None, 180, "the demo")
        assert demo.process.poll() is None, "".join(demo.lines)
        yield demo, data_dir
    finally:
        code = demo.stop() if demo.process.poll() is None else demo.process.returncode
    assert code == 0, "".join(demo.lines)
    assert demo.said("stopped; nothing is left behind")
    assert host_state() == before


def rows_when_ready(demo: Demo, data_dir: Path, sql: str) -> list[list]:
    found: list[list] = []

    def ready() -> bool:
        found[:] = query(demo, data_dir, sql)
        return bool(found)

    wait_for(ready, 120, sql)
    return found


def test_it_says_what_it_builds(running):
    demo, _ = running
    for line in (
        "node node-a is up: Pod CIDR 10.210.1.0/24",
        "pod shop/web-0 is up on node-a: 10.210.1.10",
        "pod billing/ledger-0 is up on node-b: 10.210.2.20",
        "service shop/cart is up: 10.96.0.10:80",
        "external host is up: 203.0.113.10",
        "aggregator is up: IPFIX over mutual TLS",
        "exporter of node-b is up",
    ):
        assert demo.said(line), line


def test_pod_to_pod_flows_are_correlated_across_nodes(running):
    demo, data_dir = running
    rows = rows_when_ready(
        demo,
        data_dir,
        "SELECT sourcePodName, sourceNodeName, destinationPodName, destinationNodeName, sourcePodLabels "
        "FROM flows WHERE flowType = 2 AND sourcePodName = 'probe-0' AND destinationPodName = 'cart-0' "
        "AND flowEndSecondsFromSourceNode > 0 AND flowEndSecondsFromDestinationNode > 0 LIMIT 1",
    )
    assert rows[0] == ["probe-0", "node-a", "cart-0", "node-b", '{"app":"probe"}']


def test_pod_to_service_flows_name_the_service(running):
    demo, data_dir = running
    rows = rows_when_ready(
        demo,
        data_dir,
        "SELECT sourcePodName, destinationPodName, destinationServicePortName, destinationClusterIP, "
        "destinationServicePort FROM flows WHERE destinationServicePortName != '' LIMIT 1",
    )
    assert rows[0] == ["web-0", "cart-0", "shop/cart:http", "10.96.0.10", 80]


def test_pod_to_external_flows_over_tcp_and_udp(running):
    demo, data_dir = running
    sql = (
        "SELECT DISTINCT sourcePodName, protocolIdentifier, destinationTransportPort FROM flows WHERE flowType = 3 "
        "AND destinationIP = '203.0.113.10' ORDER BY protocolIdentifier"
    )
    wait_for(lambda: len(query(demo, data_dir, sql)) == 2, 120, "TCP and UDP flows to the external host")
    assert query(demo, data_dir, sql) == [["web-0", 6, 443], ["probe-0", 17, 53]]


def test_policies_allow_and_deny(running):
    demo, data_dir = running
    allowed = rows_when_ready(
        demo,
        data_dir,
        "SELECT ingressNetworkPolicyNamespace, ingressNetworkPolicyName, ingressNetworkPolicyRuleAction FROM flows "
        "WHERE sourcePodName = 'cart-0' AND destinationPodName = 'ledger-0' AND ingressNetworkPolicyRuleAction = 1 "
        "LIMIT 1",
    )
    assert allowed[0] == ["billing", "isolate-ledger", 1]
    # ingress is the verdict of the destination's Node, on Pods of the other Node
    across = (
        "SELECT DISTINCT sourcePodName, ingressNetworkPolicyNamespace, ingressNetworkPolicyName, "
        "ingressNetworkPolicyRuleName, ingressNetworkPolicyRuleAction FROM flows WHERE flowType = 2 "
        "AND destinationPodName = 'cart-0' ORDER BY sourcePodName"
    )
    wait_for(lambda: len(query(demo, data_dir, across)) >= 2, 120, "flows to cart-0 from both Pods")
    assert query(demo, data_dir, across) == [
        ["probe-0", "shop", "allow-cart-from-web", "ingress-0", 1],
        ["web-0", "shop", "allow-cart-from-web", "ingress-0", 1],
    ]
    denied = rows_when_ready(
        demo,
        data_dir,
        "SELECT ingressNetworkPolicyRuleAction, reverseOctetDeltaCount FROM flows "
        "WHERE sourcePodName = 'web-0' AND destinationPodName = 'ledger-0' AND ingressNetworkPolicyRuleAction = 2 "
        "LIMIT 1",
    )
    assert denied[0] == [2, 0]  # dropped: nothing came back


def test_it_prints_a_live_summary(running):
    demo, _ = running

    def summaries() -> list[str]:
        return [
            line for line in demo.lines if line.startswith("flows stored: ") and not line.startswith("flows stored: 0 ")
        ]

    line = re.compile(r"flows stored: [\d,]+ \(.*inter-node [\d,]+.*\); records in: [\d,]+/s\n")
    # the first summaries may count only the flows that were quick to arrive (a busy machine): wait for
    # one with the correlated inter-node flows, and every summary keeps the format
    wait_for(lambda: any(line.fullmatch(text) for text in summaries()), 120, "a summary with inter-node flows")
    assert all(re.fullmatch(r"flows stored: [\d,]+ \(.+\); records in: [\d,]+/s\n", text) for text in summaries())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_the_dashboards_show_the_cluster(running):
    from playwright.sync_api import sync_playwright

    demo, data_dir = running
    rows_when_ready(demo, data_dir, "SELECT 1 FROM flows_pod_view WHERE sourcePodName = 'probe-0' LIMIT 1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800}, ignore_https_errors=True)
            page.goto(demo.url() + "&d=pod_to_pod&range=900")
            table = page.locator("[data-panel='bytes'] table.links")
            table.wait_for(timeout=60_000)
            text = table.inner_text()
            assert "ops/probe-0 → shop/cart-0" in text, text
            screenshot(page, "demo")
        finally:
            browser.close()


def test_a_second_demo_is_refused(running, tmp_path):
    demo, _ = running
    other = Demo("--data-dir", str(tmp_path / "other"), "--port", str(free_port()))
    assert other.process.wait(60) == 1
    other.reader.join(10)
    pid = demo.process.pid
    assert other.said(f"error: flowscope demo is already running (pid {pid}); stop it first")
    assert not (tmp_path / "other").exists()  # nothing half-built
