"""Prometheus metrics of one instance (served at ``/metrics``)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EMITS = Counter("clscale_emits_total", "Socket.IO emits by path: local (no Redis) or remote (published to a peer)",
                ["path"], registry=REGISTRY)
EMIT_ERRORS = Counter("clscale_emit_errors_total", "Cross-instance emits that failed to reach Redis", registry=REGISTRY)
SESSIONS = Gauge("clscale_sessions", "Chainlit sessions held by this instance", registry=REGISTRY)
SOCKETS = Gauge("clscale_sockets", "Socket.IO connections on this instance", registry=REGISTRY)
TRACKED = Gauge("clscale_tracked_entries", "Per-session bookkeeping entries held in this process, by map "
                "(cl-scale's and Chainlit's own): a number that only grows is a leak", ["map"], registry=REGISTRY)
RESTORED = Counter("clscale_sessions_restored_total", "Sessions rehydrated from Redis after a move", registry=REGISTRY)
STORE_ERRORS = Counter("clscale_session_store_errors_total", "Session snapshot reads/writes that failed",
                       registry=REGISTRY)
DRAINED = Counter("clscale_drained_sockets_total", "Sockets closed by a graceful drain (clients reconnect to a peer)",
                  registry=REGISTRY)
REFUSED_WHILE_CLOSING = Counter("clscale_messages_refused_closing_total",
                                "Client messages not started because the instance was closing", registry=REGISTRY)
COMMIT_TIMEOUTS = Counter("clscale_session_commit_timeouts_total",
                          "Replies sent before their session state was confirmed in Redis (Redis slow)",
                          registry=REGISTRY)
SNAPSHOT_SKIPPED = Counter("clscale_user_session_values_skipped_total",
                           "user_session values not stored because they are not JSON-serialisable",
                           registry=REGISTRY)
FORWARDED = Counter("clscale_http_forwarded_total", "Session-bound HTTP requests forwarded to the owner instance",
                    ["outcome"], registry=REGISTRY)
WORKER_UP = Gauge("clscale_worker_up", "Workers in the registry: 1 healthy, 0 stale (silent past 2 intervals)",
                  ["worker", "kind"], registry=REGISTRY)
WORKER_AGE = Gauge("clscale_worker_last_seen_age_seconds", "Seconds since each worker's last heartbeat",
                   ["worker", "kind"], registry=REGISTRY)
WORKER_SENT = Gauge("clscale_worker_sent", "Messages each worker reports sent (its running total)",
                    ["worker", "kind"], registry=REGISTRY)
WORKER_ERRORS = Gauge("clscale_worker_errors", "Errors each worker reports (its running total)",
                      ["worker", "kind"], registry=REGISTRY)
WORKER_RATE = Gauge("clscale_worker_messages_per_second", "Each worker's send rate between its last two heartbeats",
                    ["worker", "kind"], registry=REGISTRY)
LISTENER_LAG = Gauge("clscale_listener_lag_seconds", "Seconds since the Redis listener last saw its own ping",
                     registry=REGISTRY)
WORKER_MESSAGES = Counter("clscale_worker_messages_total", "Worker messages by outcome", ["outcome"],
                          registry=REGISTRY)
OUTBOX_DEPTH = Gauge("clscale_outbox_depth", "Worker messages waiting for disconnected sessions", registry=REGISTRY)
DELIVERY_SECONDS = Histogram("clscale_worker_delivery_seconds", "Worker message publish-to-delivery time",
                             registry=REGISTRY)
RESUMED = Counter("clscale_messages_resumed_total", "User messages a previous owner left unfinished, by what this "
                  "instance did: pending (run), rerun, interrupted (notice)", ["outcome"], registry=REGISTRY)
