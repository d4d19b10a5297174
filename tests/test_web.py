"""The web UI and the live query API, over recorded flows stored in chDB, in headless Chromium.

Screenshots of every dashboard are written to ``test-output/screenshots``; with
``FLOWSCOPE_SCREENSHOTS=docs`` they are also copied to ``docs/images`` for the README.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from flowscope.plugins.web.dashboards import DASHBOARDS
from tests.helpers import CHROMIUM, ROOT, build, screenshot, wait_for

NOW = int(time.time())


def recorded_flows() -> list[dict]:
    """Pod-to-Pod, Pod-to-Service, Pod-to-External and denied flows over the last hour."""
    pods = [("shop", "web-0", "node-a", "10.244.1.10"), ("shop", "cart-0", "node-b", "10.244.2.20"),
            ("billing", "ledger-0", "node-b", "10.244.2.30"), ("ops", "probe-0", "node-a", "10.244.1.40")]  # fmt: skip
    flows = []
    for minute in range(60):
        end = NOW - 3600 + minute * 60 + 30
        for index, (ns, pod, node, ip) in enumerate(pods):
            peer_ns, peer, peer_node, peer_ip = pods[(index + 1) % len(pods)]
            base = {
                "flowStartSeconds": end - 60,
                "flowEndSeconds": end,
                "flowEndSecondsFromSourceNode": end,
                "flowEndSecondsFromDestinationNode": end,
                "sourceIPv4Address": ip,
                "sourcePodNamespace": ns,
                "sourcePodName": pod,
                "sourceNodeName": node,
                "protocolIdentifier": 6,
                "sourceTransportPort": 40000 + minute,
                "octetDeltaCount": 1000 * (index + 1) + minute,
                "reverseOctetDeltaCount": 500 * (index + 1),
                "throughput": 8000 * (index + 1),
                "reverseThroughput": 4000,
                "tcpState": "ESTABLISHED",
            }
            flows.append({**base, "destinationIPv4Address": peer_ip, "destinationPodNamespace": peer_ns,
                          "destinationPodName": peer, "destinationNodeName": peer_node,
                          "destinationTransportPort": 8080, "flowType": 1 if node == peer_node else 2,
                          "ingressNetworkPolicyName": "allow-web", "ingressNetworkPolicyNamespace": peer_ns,
                          "ingressNetworkPolicyRuleAction": 1})  # fmt: skip
            flows.append({**base, "destinationIPv4Address": "10.96.0.10", "destinationClusterIPv4": "10.96.0.10",
                          "destinationPodNamespace": "shop", "destinationPodName": "cart-0",
                          "destinationNodeName": "node-b", "destinationServicePortName": "shop/cart:http",
                          "destinationServicePort": 80, "destinationTransportPort": 8080, "flowType": 2})  # fmt: skip
            flows.append({**base, "destinationIPv4Address": f"93.184.216.{index}", "destinationTransportPort": 443,
                          "flowType": 3, "egressNetworkPolicyName": "deny-egress",
                          "egressNetworkPolicyNamespace": ns, "egressNetworkPolicyRuleAction": 2})  # fmt: skip
    return flows


FLOWS = recorded_flows()


@pytest.fixture(scope="module")
def ui(chdb_engine, tmp_path_factory):
    data = tmp_path_factory.mktemp("ui")
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": FLOWS, "batch": 500, "hold": True}],
            "sinks": [
                {
                    "type": "clickhouse",
                    "databaseURL": f"chdb://{chdb_engine}",
                    "database": "webui",
                    "commitInterval": "1s",
                }
            ],
            "apiAddress": "127.0.0.1:0",
            "dataDir": str(data),
        }
    )
    pipeline.start()
    sink = pipeline.sinks[0].sink
    wait_for(lambda: _count(sink) == len(FLOWS), 60, "the recorded flows in ClickHouse")
    yield pipeline, data, (data / "api-token").read_text().strip()
    pipeline.stop()
    pipeline.wait(20)


def _count(sink) -> int:
    try:
        return sink.query("SELECT count() FROM flows", {})[1][0][0]
    except Exception:
        return -1


def call(ui, path: str, token: str | None = "", data: bytes | None = None) -> tuple[int, object]:
    pipeline, folder, good = ui
    context = ssl.create_default_context(cafile=str(folder / "certs" / "ca.crt"))
    context.check_hostname = False
    headers = {"Authorization": f"Bearer {good if token == '' else token}"} if token is not None else {}
    request = urllib.request.Request(f"https://127.0.0.1:{pipeline.api.port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as answer:
            body = answer.read()
            status = answer.status
    except urllib.error.HTTPError as error:
        body, status = error.read(), error.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def query(ui, sql: str, **params) -> tuple[int, object]:
    return call(ui, "/clickhouse/query?" + urllib.parse.urlencode({"sql": sql, **params}))


# -- the live query API ----------------------------------------------------------------------------


def test_a_select_answers_with_columns_and_rows(ui):
    status, body = query(ui, "SELECT flowType, count() AS n FROM flows GROUP BY flowType ORDER BY flowType")
    assert status == 200
    assert body == {"columns": ["flowType", "n"], "rows": [[1, 120], [2, 360], [3, 240]]}
    status, body = call(ui, "/clickhouse/query", data=b"WITH 2 AS two SELECT two * 21 AS answer")  # POST
    assert (status, body["rows"]) == (200, [[42]])


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("INSERT INTO flows (sourcePodName) VALUES ('x')", "only SELECT and WITH statements are allowed, not INSERT"),
        ("DROP TABLE flows", "only SELECT and WITH statements are allowed, not DROP"),
        ("SELECT 1; DROP TABLE flows", "one statement at a time: remove the ';'"),
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "table functions such as file() are not allowed"),
        ("SELECT * FROM flows WHERE sourceIP IN (SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString'))",
         "table functions such as url() are not allowed"),
        ("SELECT name FROM system.tables", "only the tables of database 'webui' can be read, not system.tables"),
        ("SELEC 1", "only SELECT and WITH statements are allowed, not SELEC"),
    ],
)  # fmt: skip
def test_anything_but_one_read_is_refused(ui, sql, reason):
    status, body = query(ui, sql)
    assert status == 400
    assert reason in body["error"]
    assert _count(ui[0].sinks[0].sink) == len(FLOWS)  # nothing was written or dropped


def test_the_limits_hold(ui):
    status, body = query(ui, "SELECT sourcePodName FROM flows", maxRows=100)  # 720 rows
    assert status == 400 and "more than 100 rows; narrow the query (WHERE, LIMIT)" in body["error"]
    slow = (
        "SELECT count() FROM flows AS a, flows AS b, flows AS c, flows AS d "
        "WHERE a.octetDeltaCount + b.throughput + c.throughput + d.throughput > 0"
    )
    status, body = query(ui, slow, timeout=1)  # 720 to the 4th: 269 billion rows to compare
    assert status == 400 and "took longer than 1s" in body["error"]
    status, body = query(ui, "SELECT nosuchcolumn FROM flows")
    assert status == 400 and "Unknown expression identifier" in body["error"]


def test_queries_need_the_token(ui):
    assert call(ui, "/clickhouse/query?sql=SELECT%201", token=None)[0] == 401
    assert call(ui, "/ui/api/data/flow_records", token=None)[0] == 401
    assert call(ui, "/ui/api/dashboards", token="wrong")[0] == 401
    assert call(ui, "/ui/", token=None)[0] == 200  # the page holds no data


def test_clickhouse_query_command_asks_the_running_process(ui, tmp_path):
    pipeline, folder, _ = ui
    config = tmp_path / "p.yaml"
    config.write_text(
        f"sources: [{{type: jsonl, path: '-'}}]\n"
        f"sinks: [{{type: clickhouse, databaseURL: 'chdb://{pipeline.sinks[0].sink.target.path}', database: webui}}]\n"
        f"apiAddress: 127.0.0.1:{pipeline.api.port}\ndataDir: {folder}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowscope.entrypoints.cli", "clickhouse", "query", "-c", str(config), "-o", "json",
         "SELECT count() AS n FROM flows"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"n": len(FLOWS)}
    assert "is open in another process" in result.stderr and f"127.0.0.1:{pipeline.api.port}" in result.stderr


# -- the dashboards' data --------------------------------------------------------------------------


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=[d.id for d in DASHBOARDS])
def test_every_panel_has_data(ui, dashboard):
    status, body = call(ui, f"/ui/api/data/{dashboard.id}?from={NOW - 3600}&to={NOW}")
    assert status == 200, body
    for panel in dashboard.panels:
        answer = body["panels"][panel.id]
        assert "error" not in answer, (panel.id, answer)
        assert answer["rows"], panel.id


def test_pod_to_pod_bytes_are_summed_per_pair(ui):
    _, body = call(ui, f"/ui/api/data/pod_to_pod?from={NOW - 3600}&to={NOW}")
    sankey = body["panels"]["bytes"]
    rows = {tuple(row[:4]): row[4] for row in sankey["rows"]}
    # web-0 → cart-0: each minute, one flow to the Pod and one through its Service, of 1000 + minute bytes
    assert rows[("shop", "web-0", "shop", "cart-0")] == 2 * (60 * 1000 + sum(range(60)))
    assert all(row[0] not in ("kube-system", "flow-visibility", "flow-aggregator") for row in sankey["rows"])


def test_filters_and_the_time_range_narrow_every_panel(ui):
    _, everything = call(ui, f"/ui/api/data/flow_records?from={NOW - 3600}&to={NOW}")
    filters = urllib.parse.quote(json.dumps({"sourcePodNamespace": "shop"}))
    _, shop = call(ui, f"/ui/api/data/flow_records?from={NOW - 3600}&to={NOW}&filters={filters}")
    _, recent = call(ui, f"/ui/api/data/flow_records?from={NOW - 300}&to={NOW}")
    assert everything["panels"]["records"]["rows"] == [[len(FLOWS)]]
    assert shop["panels"]["records"]["rows"] == [[sum(1 for f in FLOWS if f["sourcePodNamespace"] == "shop")]]
    assert recent["panels"]["records"]["rows"] == [[sum(1 for f in FLOWS if f["flowEndSeconds"] >= NOW - 300)]]


@pytest.mark.parametrize(
    ("query_string", "error"),
    [
        ("from=10&to=5", "time range: from (10) must be before to (5)"),
        ("from=yesterday", "time range: from and to are epoch seconds"),
        ("filters=%7B%22podName%22%3A%22x%22%7D", "filters: unknown column(s) podName"),
        ("filters=nope", "filters: a JSON object of column: value"),
    ],
)
def test_bad_ranges_and_filters_say_what_is_wrong(ui, query_string, error):
    status, body = call(ui, f"/ui/api/data/flow_records?{query_string}")
    assert status == 400 and body["error"].startswith(error)


# -- in the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )  # fmt: skip
        yield browser
        browser.close()


def open_page(browser, ui, fragment: str):
    pipeline, _, token = ui
    context = browser.new_context(viewport={"width": 1280, "height": 800}, ignore_https_errors=True, timezone_id="UTC")
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    own = f"https://127.0.0.1:{pipeline.api.port}/"  # nothing may come from anywhere else
    page.on("request", lambda request: None if request.url.startswith((own, "data:")) else errors.append(request.url))
    page.goto(f"{own}ui/#token={token}&{fragment}")
    return page, errors


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=[d.id for d in DASHBOARDS])
def test_every_dashboard_draws_every_chart_without_errors(browser, ui, dashboard):
    page, errors = open_page(browser, ui, f"d={dashboard.id}&range=3600")
    try:
        page.wait_for_selector(f"[data-panel='{dashboard.panels[-1].id}']", timeout=60_000)
        for panel in dashboard.panels:
            box = page.locator(f"[data-panel='{panel.id}']")
            assert box.locator(".error").count() == 0, box.inner_text()
            drawn = {"stat": ".stat", "table": "table.records tbody tr", "sankey": ".main-svg",
                     "timeseries": ".main-svg", "pie": ".main-svg"}[panel.kind]  # fmt: skip
            assert box.locator(drawn).count() > 0, (panel.id, box.inner_html()[:500])
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # fits the width
        screenshot(page, dashboard.id)
        assert errors == []
    finally:
        page.context.close()


def local(seconds: int) -> str:
    """A time as the page's datetime-local inputs take it (the browser runs in UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def test_a_filter_and_a_time_range_change_what_is_shown(browser, ui):
    # a fixed range, not "the last hour": the flows were stored minutes ago
    page, errors = open_page(browser, ui, f"d=flow_records&range=custom&from={NOW - 3700}&to={NOW + 60}")
    try:
        stat = page.locator("[data-panel='records'] .stat")
        stat.wait_for(timeout=60_000)
        assert stat.inner_text() == f"{len(FLOWS):,}"
        page.fill("#filter-key", "sourcePodNamespace")
        page.fill("#filter-value", "billing")
        page.click("#add-filter button")
        billing = [flow for flow in FLOWS if flow["sourcePodNamespace"] == "billing"]
        shows = "document.querySelector(\"[data-panel='records'] .stat\")?.textContent === '{:,}'"
        page.wait_for_function(shows.format(len(billing)))
        page.fill("#from", local(NOW - 300))  # the last five minutes of the flows
        page.dispatch_event("#from", "change")
        recent = [flow for flow in billing if flow["flowEndSeconds"] >= NOW - 300]
        page.wait_for_function(shows.format(len(recent)))
        page.fill("[data-column='destinationIP']", "93.184")  # a column filter, in the table
        external = [flow for flow in recent if flow["destinationIPv4Address"].startswith("93.184")]
        page.wait_for_function(f"document.querySelector('.count').textContent.startsWith('{len(external)} of')")
        assert 0 < len(external) < len(recent) < len(billing) < len(FLOWS)
        assert errors == []
    finally:
        page.context.close()


def test_a_row_links_to_its_flow_records(browser, ui):
    page, errors = open_page(browser, ui, "d=pod_to_service&range=3600")
    try:
        link = page.locator("[data-panel='bytes'] .records-link").first
        link.wait_for(timeout=60_000)
        link.click()
        page.locator("[data-panel='records'] .stat").wait_for(timeout=60_000)
        chips = page.locator("#filters .chip").all_inner_texts()
        assert any(chip.startswith("destinationServicePortName = shop/cart:http") for chip in chips), chips
        assert errors == []
    finally:
        page.context.close()


def test_without_a_token_the_page_asks_for_one(browser, ui):
    pipeline, _, token = ui
    context = browser.new_context(viewport={"width": 1280, "height": 800}, ignore_https_errors=True)
    page = context.new_page()
    try:
        page.goto(f"https://127.0.0.1:{pipeline.api.port}/ui/#d=flow_records")
        page.locator("#login").wait_for(state="visible", timeout=60_000)
        assert page.locator(".panel").count() == 0
        page.fill("#token", token)
        page.click("#login button")
        page.locator("[data-panel='records'] .stat").wait_for(timeout=60_000)
    finally:
        context.close()


def test_a_bad_time_range_is_a_message_not_a_blank_page(browser, ui):
    page, _ = open_page(browser, ui, f"d=flow_records&range=custom&from={NOW}&to={NOW - 60}")
    try:
        page.locator("#message").wait_for(state="visible", timeout=60_000)
        assert "time range: from" in page.locator("#message").inner_text()
    finally:
        page.context.close()


# -- Grafana ---------------------------------------------------------------------------------------

GRAFANA = ROOT / "deploy" / "grafana"


def test_the_grafana_files_are_what_flowscope_web_grafana_writes(tmp_path):
    from flowscope.plugins.web import grafana

    written = grafana.write(tmp_path)
    assert sorted(path.relative_to(tmp_path) for path in written) == sorted(
        path.relative_to(GRAFANA) for path in GRAFANA.rglob("*") if path.is_file() and path.name != "README.md"
    )
    for path in written:
        assert (GRAFANA / path.relative_to(tmp_path)).read_text() == path.read_text(), path


def grafana_queries() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                found.append((path.stem, panel["title"], target["rawSql"]))
    return found


@pytest.mark.parametrize(("dashboard", "title", "sql"), grafana_queries(), ids=lambda value: str(value)[:40])
def test_every_grafana_query_runs_on_the_schema(ui, dashboard, title, sql):
    concrete = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN toDateTime({NOW - 3600}) AND toDateTime({NOW})", sql)
    concrete = concrete.replace("$__interval_s", "60")
    assert "$" not in concrete, concrete
    _, rows = ui[0].sinks[0].sink.query(concrete, {})
    assert rows, (dashboard, title)


def test_a_stopped_clickhouse_is_a_message_on_every_panel(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the block ends
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": FLOWS[:5], "hold": True}],
            "sinks": [{"type": "clickhouse", "databaseURL": f"http://127.0.0.1:{port}"}],
            "apiAddress": "127.0.0.1:0",
            "shutdownTimeout": "1s",
            "dataDir": str(tmp_path),
        }
    )
    pipeline.start()
    try:
        ui = (pipeline, tmp_path, (tmp_path / "api-token").read_text().strip())
        status, body = call(ui, "/ui/api/data/pod_to_pod")
        assert status == 200
        for panel in body["panels"].values():
            assert (
                panel["error"] == f"ClickHouse at http://127.0.0.1:{port} is not connected yet; the sink keeps trying"
            )
        status, body = query(ui, "SELECT 1")
        assert (status, body["error"]) == (
            503,
            f"ClickHouse at http://127.0.0.1:{port} is not connected yet; the sink keeps trying",
        )
    finally:
        pipeline.stop()
        pipeline.wait(10)


def test_docs_show_every_panel_and_its_sql():
    text = (ROOT / "docs" / "dashboards.md").read_text()
    for dashboard in DASHBOARDS:
        assert f"## {dashboard.title}\n" in text
        assert f"(images/{dashboard.id}.png)" in text and (ROOT / "docs" / "images" / f"{dashboard.id}.png").exists()
        for panel in dashboard.panels:
            assert f"### {panel.title}\n" in text, panel.title
            assert f"```sql\n{panel.sql}\n```" in text, panel.title
