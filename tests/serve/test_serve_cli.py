"""``navit serve`` as users run it: a process on 127.0.0.1 that finishes queued requests on SIGTERM."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from navit_deploy.serve.client import EmbeddingClient, metric_value
from tests.serve.conftest import WAIT_S, image_bytes, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _lines(stream) -> "queue.Queue[str]":
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in iter(stream.readline, "")], daemon=True).start()
    return q


def test_sigterm_finishes_the_queued_request_then_exits(exported, pipe):
    # Ten minutes of max wait: the queued image can only come back this soon because the drain runs it.
    cmd = [sys.executable, "-m", "navit_deploy.cli", "serve", "--onnx", str(exported("dense")), "--port", "0",
           "--max-wait-ms", "600000", "--graceful-timeout", str(WAIT_S)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = _lines(proc.stdout)
        line = out.get(timeout=60)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        port = int(m.group(1))
        img = image_bytes(90, 50, 3)
        answer: dict = {}
        client = threading.Thread(target=lambda: answer.update(a=EmbeddingClient("127.0.0.1", port).embed(img)))
        client.start()
        with EmbeddingClient("127.0.0.1", port) as c:
            wait_until(lambda: metric_value(c.metrics(), "navit_queue_images") == 1, "the image to be queued")
        proc.send_signal(signal.SIGTERM)
        client.join(WAIT_S)
        code = proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_S)
    assert answer["a"][0] == 200, answer
    np.testing.assert_allclose(answer["a"][1]["data"][0]["embedding"], pipe.run([img])[0].embedding, atol=1e-5)
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down gracefully
