"""The demo's traffic: in each Pod (and the external host) one Python process answers on the Pod's
ports and talks to its destinations, steadily, over TCP and UDP."""

from __future__ import annotations

import json
import subprocess
import sys

from flowscope.entrypoints.demo.cluster import Cluster

# Run inside a network namespace as ``python -c AGENT CONFIG``: servers answer every request with a
# reply a quarter its size (so flows have reverse bytes); clients connect or send every few seconds.
AGENT = r"""
import json, socket, sys, threading, time

config = json.loads(sys.argv[1])

def tcp_server(port):
    server = socket.create_server(("0.0.0.0", port), backlog=64)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()

def answer(conn):
    with conn:
        conn.settimeout(5)
        received = 0
        try:
            while chunk := conn.recv(65536):
                received += len(chunk)
            conn.sendall(b"r" * max(1, received // 4))
        except OSError:
            pass

def udp_server(port):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", port))
    while True:
        data, peer = server.recvfrom(65536)
        server.sendto(b"r" * max(1, len(data) // 4), peer)

def talk(host, port, protocol, size, every):
    payload = b"x" * size
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if protocol == "udp" else None
    while True:
        started = time.monotonic()
        try:
            if udp is not None:
                udp.sendto(payload, (host, port))
            else:
                with socket.create_connection((host, port), timeout=1) as conn:
                    conn.sendall(payload)
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(2)
                    while conn.recv(65536):
                        pass
        except OSError:
            pass  # refused, dropped by a policy, or timed out: try again next time
        time.sleep(max(0.05, every - (time.monotonic() - started)))

for port in config["tcp"]:
    threading.Thread(target=tcp_server, args=(port,), daemon=True).start()
for port in config["udp"]:
    threading.Thread(target=udp_server, args=(port,), daemon=True).start()
time.sleep(1)  # let every Pod's servers start before the first requests
for host, port, protocol, size, every in config["talks"]:
    threading.Thread(target=talk, args=(host, port, protocol, size, every), daemon=True).start()
while True:
    time.sleep(3600)
"""


def start(cluster: Cluster) -> list[subprocess.Popen]:
    """One agent per Pod and one on the external host; the caller stops them."""
    agents = []
    for pod in cluster.pods:
        key = f"{pod.namespace}/{pod.name}"
        talks = [[t.host, t.port, t.protocol, t.size, t.every] for t in cluster.talks if t.client == key]
        agents.append(_agent(pod.netns, {"tcp": list(pod.tcp_ports), "udp": list(pod.udp_ports), "talks": talks}))
    external = cluster.external
    config = {"tcp": list(external.tcp_ports), "udp": list(external.udp_ports), "talks": []}
    agents.append(_agent(external.netns, config))
    return agents


def _agent(netns: str, config: dict) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", AGENT, json.dumps(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(agents: list[subprocess.Popen]) -> None:
    for agent in agents:
        agent.kill()
    for agent in agents:
        agent.wait(10)
