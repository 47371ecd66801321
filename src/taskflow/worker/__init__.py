"""The worker role: claims jobs from Redis, runs handlers, records outcomes."""
