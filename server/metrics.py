"""Prometheus metrics (SPEC §8), one registry per app.

Nothing here runs per delivery: the hub keeps plain integer counters (per publication and
per batch of writes, see Hub._count), and a collector turns them, the hub's state and the
MQTT bridge's counters into samples when /metrics is scraped. Only HTTP requests,
publication batches and dependency checks touch prometheus-client objects as they happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from server.channel_names import namespace
from server.hub import Hub

# Namespaces the server itself publishes to; with the configured ones they are the only
# `namespace` label values, any other is `other`: a client naming channels freely cannot
# grow the label set.
SERVER_NAMESPACES = frozenset(
    {"general", "readings", "sensors", "anomalies", "predictions", "chat", "user"}
)
OTHER = "other"
# Seconds: publication accepted -> written; HTTP request -> response.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def namespace_labeller(known: Iterable[str]) -> Callable[[str], str]:
    names = frozenset(known) | SERVER_NAMESPACES

    def label(channel: str) -> str:
        ns = namespace(channel)
        return ns if ns in names else OTHER

    return label


class Metrics:
    def __init__(self, hub: Hub, rest_rate_limited: Callable[[], int]) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        # transport label -> how many connections it has now (hub.transports is keyed by
        # the transports' framing names).
        self.connections: dict[str, Callable[[], int]] = {
            "ws": lambda: hub.transports["websocket"],
            "sse": lambda: hub.transports["sse"],
        }
        self.rate_limited: dict[str, Callable[[], int]] = {
            "rest": rest_rate_limited,
            "ws": lambda: hub.stats.rate_limited,
        }
        self.http_duration = Histogram(
            "sensorcast_http_request_duration_seconds",
            "REST request duration by method, route pattern and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.publish_latency = Histogram(
            "sensorcast_publish_latency_seconds",
            "Publication accepted -> written to the sockets (once per batch, its oldest)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.dependency_up = Gauge(
            "sensorcast_dependency_up",
            "1 when the dependency answered its last check",
            ["dependency"],
            registry=registry,
        )
        # (accepted, rejected) MQTT messages so far, or None without the bridge.
        self.mqtt: Callable[[], tuple[int, int] | None] = lambda: None
        registry.register(_HubCollector(self, hub))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _HubCollector(Collector):
    """The hub's counters and state, read at scrape time."""

    def __init__(self, metrics: Metrics, hub: Hub) -> None:
        self.metrics = metrics
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub, stats = self.hub, self.hub.stats
        connections = GaugeMetricFamily(
            "sensorcast_connections", "Open connections by transport", labels=["transport"]
        )
        for transport, count in self.metrics.connections.items():
            connections.add_metric([transport], count())
        yield connections
        yield GaugeMetricFamily(
            "sensorcast_subscriptions",
            "Channel subscriptions of the open connections",
            value=sum(len(subs) for subs in hub.channels.values()),
        )
        for name, doc, counts in (
            ("publications", "Publications by channel namespace", stats.published),
            ("deliveries", "Frames written to subscribers by channel namespace", stats.delivered),
        ):
            family = CounterMetricFamily(f"sensorcast_{name}", doc, labels=["namespace"])
            for ns, n in sorted(counts.items()):
                family.add_metric([ns], n)
            yield family
        yield CounterMetricFamily(
            "sensorcast_slow_consumers",
            "Connections closed (4008) for not reading their frames",
            value=stats.dropped_slow_consumers,
        )
        limited = CounterMetricFamily(
            "sensorcast_rate_limited",
            "Requests and frames refused by rate limits",
            labels=["transport"],
        )
        for transport, count in self.metrics.rate_limited.items():
            limited.add_metric([transport], count())
        yield limited
        mqtt = CounterMetricFamily(
            "sensorcast_mqtt_messages", "MQTT messages by result", labels=["result"]
        )
        accepted, rejected = self.metrics.mqtt() or (0, 0)
        mqtt.add_metric(["accepted"], accepted)
        mqtt.add_metric(["rejected"], rejected)
        yield mqtt
