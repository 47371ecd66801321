"""The chaos harness: a mixed workload on two ``taskflow work`` processes while workers
are SIGKILLed, Redis is flushed and restarted and PostgreSQL is restarted, then the
invariants checked from PostgreSQL. Run by ``tests/e2e/test_chaos.py`` (short) and
``make soak`` (``python -m tests.chaos``, long)."""
