"""What ``flowscope demo`` says when it cannot run as asked: a busy port refused before anything is
built, and without nftables or root, an explanation and recorded flows in the same dashboards.

(Apart from tests/e2e/test_demo.py, whose demo runs for the whole of its module: these need none.)
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from tests.e2e.test_demo import Demo, host_state, query
from tests.helpers import free_port, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo's cluster needs root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed"),
]


def test_a_busy_port_is_refused_before_anything_is_built(tmp_path):
    before = host_state()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = Demo("--data-dir", str(tmp_path / "d"), "--port", str(port))
        assert demo.process.wait(60) == 1
    demo.reader.join(10)
    assert demo.said(f"error: port {port} is in use by another process; choose another with --port")
    assert host_state() == before


def replays(demo: Demo, data_dir: Path) -> None:
    wait_for(lambda: demo.said("running; Ctrl-C stops it") or demo.process.poll() is not None, 120, "the replay")
    assert demo.process.poll() is None, "".join(demo.lines)
    wait_for(lambda: query(demo, data_dir, "SELECT count() FROM flows")[0][0] > 1000, 60, "the recorded flows")


def test_without_nftables_it_explains_and_replays(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("ip", "sysctl", "setpriv"):  # everything but nft
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    before = host_state()
    demo = Demo("--data-dir", str(tmp_path / "d"), "--port", str(free_port()), env={"PATH": str(tools)})
    try:
        replays(demo, tmp_path / "d")
        assert demo.said("the 'nft' command is missing (apt-get install nftables)")
        assert demo.said("Showing recorded flows of the same cluster in the dashboards instead.")
    finally:
        assert demo.stop() == 0
    assert host_state() == before


def _others_can_enter(path: Path) -> bool:
    """Whether every folder down to ``path`` lets other users through (o+x)."""
    return all(folder.stat().st_mode & 0o001 for folder in (path, *path.parents))


@pytest.mark.skipif(
    not _others_can_enter(Path(__file__).resolve().parents[2]),
    reason="uid 65534 cannot reach this checkout (a folder on its path is closed to others, e.g. mktemp -d's 0700)",
)
def test_without_root_it_explains_and_replays():
    shared = Path(tempfile.mkdtemp(prefix="flowscope-demo-"))  # pytest's folders are root's alone
    shared.chmod(0o777)
    data_dir = shared / "d"
    demo = Demo("--data-dir", str(data_dir), "--port", str(free_port()), user="65534")
    try:
        replays(demo, data_dir)
        assert demo.said("flowscope demo cannot build its cluster here: it needs root")
    finally:
        assert demo.stop() == 0
        shutil.rmtree(shared)
