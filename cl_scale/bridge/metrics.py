"""Prometheus metrics of one bridge process (served at ``/metrics`` on ``--health-port``)."""

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)

FORWARDED = Counter("clscale_bridge_forwarded_total", "Broker messages appended to session outboxes",
                    registry=REGISTRY)
DUPLICATES = Counter("clscale_bridge_duplicates_total", "Redelivered broker messages already delivered (skipped)",
                     registry=REGISTRY)
REFUSED = Counter("clscale_bridge_refused_total", "Broker messages dead-lettered, by code", ["code"],
                  registry=REGISTRY)
BATCHES = Counter("clscale_bridge_batches_total", "Batches forwarded and acknowledged on the broker",
                  registry=REGISTRY)
RETRIES = Counter("clscale_bridge_retries_total", "Batches retried (Redis or broker error)", registry=REGISTRY)
LAG = Gauge("clscale_bridge_lag", "Messages waiting on the broker (Kafka consumer lag / RabbitMQ queue depth)",
            registry=REGISTRY)
LAST_SEEN = Gauge("clscale_bridge_last_message_timestamp_seconds", "Unix time the last message was forwarded",
                  registry=REGISTRY)
CONNECTED = Gauge("clscale_bridge_broker_connected", "1 while the broker connection is up", registry=REGISTRY)
BACKPRESSURE = Counter("clscale_bridge_backpressure_waits_total",
                       "Batches held back because a connected session's outbox was at its bound", registry=REGISTRY)
