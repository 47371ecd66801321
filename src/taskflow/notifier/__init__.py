"""``taskflow notify``: delivers the outbox (dead letters to Kafka or RabbitMQ, webhooks,
email). See :mod:`taskflow.notifier.notifier` for the loop and the sinks beside it."""
