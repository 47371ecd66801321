"""What the API's handlers share: settings, stores, the submitter and the metrics."""

from __future__ import annotations

import asyncio

from taskflow.adapters.observe import Observer
from taskflow.adapters.overview import OverviewStore
from taskflow.api.auth import TokenVerifier
from taskflow.api.ended import EndedCounts
from taskflow.api.metrics import ApiMetrics
from taskflow.api.submit import Submitter
from taskflow.api.watch import ChangeFeed, JobReads
from taskflow.config import Settings
from taskflow.runtime import Stores


class ApiContext:
    """Held in the app's state as ``state.api``."""

    def __init__(self, settings: Settings, stores: Stores, submitter: Submitter,
                 verifier: TokenVerifier, metrics: ApiMetrics) -> None:
        self.settings = settings
        self.stores = stores
        self.store = stores.store
        self.dispatch = stores.dispatch
        self.submitter = submitter
        self.verifier = verifier
        self.metrics = metrics
        self.timeout = settings.api.backend_timeout
        self.feed = ChangeFeed(stores.dispatch)
        self.reads = JobReads(stores.store)
        self.overview = OverviewStore(stores.store.pool)
        self.ended = EndedCounts(self.overview)  # jobs ended per minute, for GET /queues
        self.observer = Observer(stores.dispatch, stores.store.pool)  # workers alive
        metrics.waiters.set_function(lambda: len(self.feed))

    def deadline(self) -> asyncio.Timeout:
        """Bounds a request's wait on the stores; a TimeoutError becomes a 503."""
        return asyncio.timeout(self.timeout)
