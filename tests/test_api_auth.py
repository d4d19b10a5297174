"""The HTTP API answers nobody without a token: a token file by default, Kubernetes reviews in a
cluster; health checks stay open; `flowscope get` sends the token and verifies the server."""

from __future__ import annotations

import json
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.helpers import build
from tests.k8s_api_server import K8sApiServer

CLI = [sys.executable, "-m", "flowscope.entrypoints.cli"]


def aggregator(tmp_path, **settings):
    pipeline = build(
        {
            "bundle": "aggregator",
            "aggregatorTransportProtocol": "tcp",
            "listenAddress": "127.0.0.1:0",
            "grpcListenAddress": "127.0.0.1:0",
            "apiAddress": "127.0.0.1:0",
            "sinks": [{"type": "collect"}],
            "dataDir": str(tmp_path),
            **settings,
        }
    )
    pipeline.start()
    return pipeline


def call(pipeline, path: str, token: str | None = None, ca=None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca or pipeline.config.settings.dataDir / "certs" / "ca.crt"))
    context.check_hostname = False
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"https://127.0.0.1:{pipeline.api.port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def with_token(tmp_path):
    pipeline = aggregator(tmp_path)
    yield pipeline, (tmp_path / "api-token").read_text().strip()
    pipeline.stop()
    pipeline.wait(10)


def test_a_token_file_is_made_at_first_start(with_token, tmp_path):
    _, token = with_token
    assert len(token) >= 32
    assert stat.S_IMODE((tmp_path / "api-token").stat().st_mode) == 0o600


@pytest.mark.parametrize("path", ["/flowrecords", "/recordmetrics", "/metrics", "/nope"])
def test_no_token_or_a_wrong_one_is_refused(with_token, path):
    pipeline, token = with_token
    status, text = call(pipeline, path)
    assert status == 401 and "Bearer" in text
    assert call(pipeline, path, "garbage")[0] == 401
    assert call(pipeline, path, token)[0] == (404 if path == "/nope" else 200)


def test_health_needs_no_token(with_token):
    pipeline, _ = with_token
    assert call(pipeline, "/healthz") == (200, "ok")
    assert call(pipeline, "/readyz") == (200, "ok")


def test_flowscope_get_sends_the_token_and_verifies_the_server(with_token, tmp_path):
    pipeline, _ = with_token
    server = ["--server", f"https://127.0.0.1:{pipeline.api.port}"]
    ca, token = ["--ca-cert", str(tmp_path / "certs" / "ca.crt")], ["--token-file", str(tmp_path / "api-token")]

    def get(*args):
        return subprocess.run(
            [*CLI, "get", "recordmetrics", "-o", "json", *args], capture_output=True, text=True, timeout=60
        )

    result = get(*server, *ca, *token)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {}  # nothing received yet: every figure is omitted, as in Antrea
    result = get(*server, *ca, "--token-file", str(tmp_path / "nope"))
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: --token-file {str(tmp_path / 'nope')!r} does not exist",
    )
    result = get(*server, *ca)  # no token: the server's 401, with what to do
    assert result.returncode == 1
    assert (
        ": 401 Unauthorized: send 'Authorization: Bearer <token>'" in result.stderr and "--token-file" in result.stderr
    )
    result = get(*server, "--ca-cert", str(tmp_path / "missing.crt"), *token)
    assert result.returncode == 1
    assert f"there is no CA certificate at {str(tmp_path / 'missing.crt')!r}: give the CA of" in result.stderr
    assert get(*server, "--insecure", *token).returncode == 0


def test_kubernetes_reviews_the_token_in_a_cluster(tmp_path):
    with K8sApiServer() as cluster:
        cluster.user("alice-token", "alice", ["ops"])
        cluster.user("bob-token", "bob")
        cluster.allow("alice", "get", "/flowrecords")
        pipeline = aggregator(tmp_path, apiKubeconfig=str(cluster.kubeconfig(tmp_path / "kubeconfig")))
        try:
            assert call(pipeline, "/flowrecords", "alice-token") == (200, "[]")
            status, text = call(pipeline, "/flowrecords", "bob-token")
            assert (status, text) == (403, "403 Forbidden: user 'bob' may not get /flowrecords")
            assert call(pipeline, "/recordmetrics", "alice-token")[0] == 403
            assert call(pipeline, "/flowrecords", "nobody")[0] == 401
            assert call(pipeline, "/healthz")[0] == 200
            review = next(body for body in cluster.reviews if "nonResourceAttributes" in body["spec"])
            assert review["spec"]["nonResourceAttributes"] == {"path": "/flowrecords", "verb": "get"}
            assert review["spec"]["groups"] == ["ops"]
            assert not (tmp_path / "api-token").exists()
        finally:
            pipeline.stop()
            pipeline.wait(10)
