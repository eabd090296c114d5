"""Prometheus metrics of the embedding service (``GET /metrics``), one registry per service.

A registry of its own (not prometheus_client's global one) lets several services live in one process
(tests, a bench) without their counters mixing.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
COUNT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ServeMetrics:
    """Requests, images, packs, images and requests per pack, queue wait, model time and latency."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("navit_requests", "HTTP requests to /v1/embeddings, by status code",
                                ["code"], registry=r)
        self.images = Counter("navit_images", "Images received, by outcome (ok, error, cancelled)",
                              ["outcome"], registry=r)
        self.packs = Counter("navit_packs", "Model calls (one pack each)", registry=r)
        self.images_per_pack = Histogram("navit_images_per_pack", "Images in one model call",
                                         buckets=COUNT_BUCKETS, registry=r)
        self.requests_per_pack = Histogram("navit_requests_per_pack", "Distinct requests in one model call",
                                           buckets=COUNT_BUCKETS, registry=r)
        self.pack_tokens = Histogram("navit_pack_tokens", "Tokens computed in one model call",
                                     buckets=TOKEN_BUCKETS, registry=r)
        self.queue_wait = Histogram("navit_queue_wait_seconds", "Time an image waited in the queue for its pack",
                                    buckets=WAIT_BUCKETS, registry=r)
        self.model_seconds = Histogram("navit_model_seconds", "Duration of one model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("navit_request_latency_seconds", "Time from a request's arrival to its answer",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queued = Gauge("navit_queue_images", "Images waiting for a model call", registry=r)
        self.pending = Gauge("navit_pending_images", "Images admitted and not answered yet", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
