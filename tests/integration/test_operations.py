"""Operating pyrelayd: what an operator's tools see of a relay serving a real session.

A real session daemon (2.13, and 2.16 in CTF 2) streams a live session into pyrelayd started
with `--metrics-port`; a real babeltrace2 follows it; a real Prometheus server (Debian's
`prometheus`) scrapes the relay. Prometheus' query API must show exactly the packets the relay
indexed and the bytes that arrived, `/status` must describe the session (its trace format
among the rest) and its viewer, and `/healthz` must answer 200.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.requirements import require_tool
from tests.test_prometheus import Prometheus

from .conftest import LiveViewerFactory, RelayFactory, SessionFactory
from .live_helpers import session_output, wait_printed
from .lttng_env import (
    HOSTNAME,
    Relay,
    TracedApps,
    free_tcp_ports,
    read_index,
    release_tcp_ports,
    wait_until,
)

pytestmark = [pytest.mark.lttng, pytest.mark.timeout(240)]

LIVE_TIMER_US = 100_000
EVENTS = 500


@pytest.fixture
def metrics_port() -> Iterator[int]:
    [port] = free_tcp_ports(1)
    yield port
    release_tcp_ports([port])


@pytest.fixture
def prometheus_binary() -> str:
    return require_tool("prometheus", "prometheus")


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def indexed_packets(directory: Path) -> int:
    return sum(len(read_index(index)) for index in directory.rglob("index/*.idx"))


def data_bytes_on_disk(directory: Path) -> int:
    """Bytes of the data stream files of a session (not metadata, not indexes)."""
    return sum(
        path.stat().st_size
        for path in directory.rglob("*")
        if path.is_file() and path.name != "metadata" and path.parent.name != "index"
    )


def test_prometheus_and_status_describe_a_real_session_and_its_viewer(
    relay_factory: RelayFactory,
    session_factory: SessionFactory,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
    prometheus_binary: str,
    metrics_port: int,
    tmp_path: Path,
) -> None:
    relay: Relay = relay_factory(kind="py",
                                 extra_args=["--metrics-port", f"tcp://127.0.0.1:{metrics_port}"])
    relay.wait_listening([metrics_port])
    prometheus = Prometheus(prometheus_binary, tmp_path / "prometheus", metrics_port)
    try:
        prometheus.wait_ready()
        session = session_factory(relay, live_timer_us=LIVE_TIMER_US, name="operated")
        session.enable_events()
        session.start()
        viewer = live_viewer_factory(relay, session.name)
        viewer.wait_attached(relay, session.name)
        apps.run_c_app(EVENTS, delay_us=200)
        wait_printed(viewer, lambda seqs: seqs == list(range(EVENTS)), timeout=60,
                     what="every event, live")  # fmt: skip
        session.stop()  # flushes the last packets

        directory = wait_until(lambda: session_output(relay, session), timeout=10,
                               what="the session directory")  # fmt: skip

        status, body = http_get(metrics_port, "/status")
        assert status == 200
        document = json.loads(body)
        [entry] = [s for s in document["sessions"] if s["name"] == "operated"]
        expected_format = "ctf-2" if apps.sessiond.peers.writes_ctf2 else "ctf-1.8"
        assert entry["trace_format"] == expected_format
        assert entry["live_timer_us"] == LIVE_TIMER_US
        assert entry["viewers"] == 1
        assert document["viewers"], document
        assert http_get(metrics_port, "/healthz")[0] == 200

        # What the relay counted is what it wrote, as Prometheus scraped it: one packet per
        # index record, and the bytes that arrived (the padding of a packet is not sent).
        packets = wait_until(lambda: indexed_packets(directory), timeout=10, what="indexes")
        selector = '{job="pyrelayd",session="operated"}'
        wait_until(
            lambda: [
                s for s in prometheus.query(f"sum(pyrelayd_received_packets_total{selector})")
                if float(s["value"][1]) == packets
            ],
            timeout=60, interval=0.5, what=f"Prometheus to see {packets} packets received",
        )  # fmt: skip
        [scraped] = prometheus.query(f"sum(pyrelayd_received_bytes_total{selector})")
        received = float(scraped["value"][1])
        assert 0 < received <= data_bytes_on_disk(directory)
        direct = http_get(metrics_port, "/metrics")[1].decode()
        assert f'pyrelayd_received_bytes_total{{hostname="{HOSTNAME}",session="operated"}} ' \
               f"{received}" in direct
        wait_until(
            lambda: [s for s in prometheus.query('pyrelayd_viewers_open{job="pyrelayd"}')
                     if float(s["value"][1]) == 1],
            timeout=60, interval=0.5, what="Prometheus to see the viewer",
        )  # fmt: skip
        session.destroy()
        assert viewer.wait(30) == 0, viewer.stderr()
    finally:
        prometheus.stop()

