"""Broker bridges: Kafka and RabbitMQ messages into users' chats, users' messages out to brokers.

``cl-scale bridge kafka://...`` / ``amqp://...`` runs a ``runner.Runner``: a source
(``kafka.KafkaSource``, ``amqp.AmqpSource``) hands batches to ``core.Bridge``, which checks each
message (format ``worker.requests.Envelope``, optional signature, target and scope against Redis)
and appends it to its session's outbox through the SDK's ``Publisher``, or dead-letters it.
``outbound.Outbound`` publishes users' messages to a topic or exchange.
"""
