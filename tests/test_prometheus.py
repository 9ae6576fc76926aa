"""End to end with a real Prometheus server (Debian's `prometheus`) scraping pyrelayd.

A `RelaydProducer` session streams packets into a pyrelayd started with `--metrics-port`;
Prometheus scrapes it every second, and its query API must show the bytes that arrived.
Skipped when `prometheus` is not installed, unless PYRELAYD_TEST_REQUIRE_PEERS=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyrelayd.client.viewer import LiveClient
from tests.integration.lttng_env import free_tcp_ports, release_tcp_ports, stop_process
from tests.requirements import require_tool
from tests.unit.metrics_helpers import (
    HOST,
    MetricsRelay,
    open_session,
    relay_with_metrics,
    send_packets,
    wait_received,
)

pytestmark = pytest.mark.timeout(180)

SCRAPE_INTERVAL = "1s"
PACKET_SIZE = 4096
# How long Prometheus gets to start and to see a value (a failure, never a measurement).
PATIENCE_S = 90.0
DASHBOARD = Path(__file__).resolve().parents[1] / "contrib/grafana/pyrelayd-dashboard.json"
# Grafana's variables, as the dashboard would set them.
DASHBOARD_VARIABLES = {"$instance": ".*", "$__rate_interval": "30s"}


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = []
    for panel in panels:
        for target in panel.get("targets", []):
            expression = target["expr"]
            for variable, value in DASHBOARD_VARIABLES.items():
                expression = expression.replace(variable, value)
            queries.append(expression)
    return queries


@pytest.fixture
def prometheus_binary() -> str:
    return require_tool("prometheus", "prometheus")


@pytest.fixture(params=[1, 2], ids=["one-process", "workers-2"])
def relay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetricsRelay]:
    """A relay of one process, and one of a router and two workers (merged metrics)."""
    with relay_with_metrics(tmp_path / "relay", "--workers", str(request.param)) as relay:
        yield relay


class Prometheus:
    def __init__(self, binary: str, workdir: Path, target_port: int) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            "  - job_name: pyrelayd\n"
            "    static_configs:\n"
            f"      - targets: ['{HOST}:{target_port}']\n"
        )
        [self.port] = free_tcp_ports(1)
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address={HOST}:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        stop_process(self.process, 20)
        release_tcp_ports([self.port])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **query: str) -> Any:
        url = f"http://{HOST}:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=10) as reply:
            return json.loads(reply.read())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + PATIENCE_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited ({self.process.returncode}):\n{self.log_text()}")
            ready = f"http://{HOST}:{self.port}/-/ready"
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=5):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready:\n{self.log_text()}")
            time.sleep(0.2)

    def query(self, expression: str) -> list[dict[str, Any]]:
        reply = self.get("/api/v1/query", query=expression)
        assert reply["status"] == "success", reply
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    async def wait_value(self, expression: str,
                         expected: float | None) -> list[dict[str, Any]]:
        """The query's result once it holds one series with `expected` as its value (None:
        once it holds any series)."""
        deadline = time.monotonic() + PATIENCE_S
        while True:
            result = await asyncio.to_thread(self.query, expression)
            if expected is None and result:
                return result
            if len(result) == 1 and float(result[0]["value"][1]) == expected:
                return result
            if time.monotonic() > deadline:
                targets = await asyncio.to_thread(self.get, "/api/v1/targets")
                pytest.fail(f"{expression}: {result}, expected {expected}\n"
                            f"targets: {targets}\n{self.log_text()}")
            await asyncio.sleep(0.5)


@pytest.fixture
def prometheus(prometheus_binary: str, relay: MetricsRelay,
               tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(prometheus_binary, tmp_path / "prometheus", relay.metrics_port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def test_prometheus_sees_the_bytes_a_session_sent(prometheus: Prometheus,
                                                        relay: MetricsRelay) -> None:
    fed = await open_session(relay, "scraped", "traced-host")
    sent = 0
    for _ in range(3):  # across several scrapes
        for stream in fed.streams:
            sent += await send_packets(fed, stream, 16, PACKET_SIZE)
        await asyncio.sleep(0.5)
    await wait_received(fed)
    viewer = LiveClient(HOST, relay.live_port)
    await viewer.connect()
    await viewer.create_session()
    await viewer.attach(fed.session_id)

    selector = '{job="pyrelayd",hostname="traced-host",session="scraped"}'
    [series] = await prometheus.wait_value(f"pyrelayd_received_bytes_total{selector}", sent)
    assert series["metric"]["instance"] == f"{HOST}:{relay.metrics_port}"
    await prometheus.wait_value(f"pyrelayd_received_packets_total{selector}",
                                sent // PACKET_SIZE)
    await prometheus.wait_value('pyrelayd_viewers_open{job="pyrelayd"}', 1)
    await prometheus.wait_value('up{job="pyrelayd"}', 1)
    [target] = (await asyncio.to_thread(prometheus.get, "/api/v1/targets"))["data"][
        "activeTargets"]
    assert (target["health"], target["lastError"]) == ("up", "")

    # Every query of the Grafana dashboard is valid PromQL and finds series (rates do once
    # two scrapes saw the session).
    for expression in dashboard_queries():
        await prometheus.wait_value(expression, None)

    await viewer.close()
    await fed.producer.close()
