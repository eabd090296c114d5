"""The HTTP embedding service (``navit serve``): Starlette + uvicorn, with cross-request packing.

Sits above the runtime and imports it; the runtime never imports this package. Needs the ``serve``
extra (starlette, uvicorn, prometheus-client, python-multipart); torch-free.

* :mod:`~navit_deploy.serve.batcher`: the queue and the batching loop that packs images of many requests;
* :mod:`~navit_deploy.serve.app`: routes, limits, per-image answers;
* :mod:`~navit_deploy.serve.uploads`: body size limit and raw/multipart bodies;
* :mod:`~navit_deploy.serve.metrics`: Prometheus metrics;
* :mod:`~navit_deploy.serve.server`: uvicorn, graceful shutdown, a background-thread server;
* :mod:`~navit_deploy.serve.client`: a small standard-library client.
"""

from navit_deploy.serve.app import ServeConfig, create_app
from navit_deploy.serve.batcher import Batcher, QueueFullError, ShuttingDownError

__all__ = ["Batcher", "QueueFullError", "ServeConfig", "ShuttingDownError", "create_app"]
