"""The HTTP service on 127.0.0.1: concurrent clients get their own results from shared packs, bad images
stay their own errors, and the limits (503, 413), dropped clients and shutdown behave."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest

from navit_deploy.cli import main
from navit_deploy.serve.client import EmbeddingClient, metric_value
from tests.serve.conftest import WAIT_S, image_bytes, serving, wait_until


def _concurrently(n: int, fn) -> list:
    """``fn(i)`` on ``n`` threads released together; their results in order."""
    out: list = [None] * n
    errors: list = []
    barrier = threading.Barrier(n, timeout=WAIT_S)

    def run(i: int) -> None:
        try:
            barrier.wait()
            out[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a client did not finish"
    return out


def test_concurrent_clients_get_their_own_results_from_shared_packs(runner, pipe, tmp_path, capsys):
    clients = 10
    files = []
    for i in range(clients):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(image_bytes(40 + 23 * i, 150 - 9 * i, seed=i))
        files.append(str(p))
    code = main(["infer", "--onnx", str(runner.path), *files, "--json"])
    infer = json.loads(capsys.readouterr().out)
    assert code == 0
    reference = pipe.run(files)  # what `navit infer` computes, with the embeddings
    with serving(pipe, runner.artifact.labels, max_wait_ms=500) as srv:
        def post(i: int):
            with EmbeddingClient(srv.host, srv.port) as c:  # one image, or the image and a broken one
                images = [(f"img{i}.png", open(files[i], "rb").read())]
                return c.embed(images + ([("broken.jpg", b"\xff\xd8 cut")] if i % 3 == 0 else []), top_k=3)

        answers = _concurrently(clients, post)
        log = list(srv.app.state.batcher.pack_log)
        with EmbeddingClient(srv.host, srv.port) as c:
            text = c.metrics()
    for i, (status, body) in enumerate(answers):
        assert status == 200, body
        entry = body["data"][0]
        assert entry["index"] == 0 and entry["name"] == f"img{i}.png"
        np.testing.assert_allclose(entry["embedding"], reference[i].embedding, atol=1e-5)
        assert entry["tokens"] == infer[i]["tokens"] and entry["grid"] == infer[i]["grid"]
        assert [t["label"] for t in entry["top_k"]] == [t["label"] for t in infer[i]["top_k"]]
        np.testing.assert_allclose([t["score"] for t in entry["top_k"]], [t["score"] for t in infer[i]["top_k"]],
                                   atol=1e-5)
        if i % 3 == 0:
            assert body["data"][1]["error_type"] == "ImageDecodeError" and "broken.jpg" in body["data"][1]["error"]
            assert body["usage"] == {"images": 2, "ok": 1, "failed": 1, "tokens": entry["tokens"]}
    # One model call carried images of several requests, and the metrics say so.
    assert sum(r.images for r in log) == clients and max(r.requests for r in log) > 1
    assert len(log) < clients
    assert metric_value(text, "navit_packs_total") == len(log)
    # Each model call's own duration: positive, and the metric's sum is the log's.
    assert all(r.model_ms > 0 for r in log)
    assert metric_value(text, "navit_model_seconds_count") == len(log)
    assert metric_value(text, "navit_model_seconds_sum") == pytest.approx(sum(r.model_ms for r in log) / 1000)
    assert metric_value(text, "navit_requests_per_pack_sum") > metric_value(text, "navit_requests_per_pack_count")
    assert metric_value(text, "navit_requests_total", 'code="200"') == clients
    assert metric_value(text, "navit_images_total", 'outcome="ok"') == clients


def test_per_request_batching_never_mixes_requests(runner, pipe):
    with serving(pipe, max_wait_ms=500, batching="per-request") as srv:
        def post(i: int):
            with EmbeddingClient(srv.host, srv.port) as c:
                return c.embed([(f"a{i}", image_bytes(60, 30 + 10 * i, i)), (f"b{i}", image_bytes(90, 90, 50 + i))])

        answers = _concurrently(6, post)
        log = list(srv.app.state.batcher.pack_log)
    assert all(s == 200 for s, _ in answers)
    assert {r.requests for r in log} == {1} and sum(r.images for r in log) == 12
    reference = pipe.run([image_bytes(60, 30 + 10 * 2, 2), image_bytes(90, 90, 52)])
    for entry, ref in zip(answers[2][1]["data"], reference):
        np.testing.assert_allclose(entry["embedding"], ref.embedding, atol=1e-5)


def test_bad_images_are_errors_of_their_own(runner, pipe):
    good = [image_bytes(120, 80, 1), image_bytes(64, 200, 2)]
    cut = image_bytes(64, 64, 3)[:40]
    sent = [("good0.png", good[0]), ("junk.jpg", b"not an image"), ("empty.png", b""), ("cut.png", cut),
            ("wide.png", image_bytes(4000, 4, 4)), ("good1.png", good[1])]
    reference = pipe.run(good)
    with serving(pipe, max_wait_ms=1) as srv, EmbeddingClient(srv.host, srv.port) as c:
        status, body = c.embed(sent)
        raw_status, raw = c.embed(b"junk bytes")
        text_status, _ = c.request("POST", "/v1/embeddings", b"{}", {"Content-Type": "application/json"})
        none_status, _ = c.request("POST", "/v1/embeddings", b"", {"Content-Type": "image/png"})
    assert status == 200
    data = body["data"]
    assert [d["index"] for d in data] == list(range(len(sent))) and [d["name"] for d in data] == [n for n, _ in sent]
    assert [d.get("error_type") for d in data] == [None, "ImageDecodeError", "ImageDecodeError", "ImageDecodeError",
                                                  "BudgetError", None]
    for d, ref in zip([data[0], data[5]], reference):
        np.testing.assert_allclose(d["embedding"], ref.embedding, atol=1e-5)
    assert raw_status == 200 and raw["data"][0]["error_type"] == "ImageDecodeError"
    assert text_status == 415 and none_status == 400


def test_full_queue_answers_503_at_once_and_too_many_images_413(gated):
    g, pipeline = gated
    with serving(pipeline, max_queue=3, max_wait_ms=0) as srv:
        first: dict = {}
        holder = threading.Thread(target=lambda: first.update(answer=EmbeddingClient(srv.host, srv.port).embed(
            [(f"q{i}", image_bytes(50 + i, 50, i)) for i in range(3)])))
        holder.start()
        wait_until(lambda: srv.app.state.batcher.pending_images == 3, "the first request to be admitted")
        with EmbeddingClient(srv.host, srv.port) as c:
            status, body = c.embed(image_bytes(40, 40, 9))
        assert status == 503 and "queue" in body["error"]["message"]
        assert holder.is_alive() and "answer" not in first  # refused while the queue was still full
        g.open.set()
        holder.join(WAIT_S)
        with EmbeddingClient(srv.host, srv.port) as c:
            after = c.embed(image_bytes(40, 40, 9))[0]
            too_many, _ = c.embed([(f"m{i}", b"x") for i in range(4)])  # could never fit the queue
            text = c.metrics()
    assert first["answer"][0] == 200 and len(first["answer"][1]["data"]) == 3
    assert too_many == 413 and after == 200
    assert metric_value(text, "navit_requests_total", 'code="503"') >= 1
    assert metric_value(text, "navit_pending_images") == 0


def test_body_over_the_limit_is_413_declared_or_streamed(pipe):
    with serving(pipe, max_body_bytes=20_000) as srv, EmbeddingClient(srv.host, srv.port) as c:
        declared, body = c.request("POST", "/v1/embeddings", b"\0" * 30_000, {"Content-Type": "image/png"})
        c.close()
        chunks = iter([b"\0" * 8_000] * 4)  # no Content-Length: refused once 20 kB have arrived
        streamed, _ = c.request("POST", "/v1/embeddings", chunks, {"Content-Type": "image/png"})  # type: ignore[arg-type]
        c.close()
        ok, _ = c.embed(image_bytes(50, 50, 0))
    assert declared == 413 and b"limit" in body
    assert streamed == 413 and ok == 200


def _raw_request(port: int, body_len: int, send: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
              + f"Content-Length: {body_len}\r\n\r\n".encode() + send)
    return s


def test_a_dropped_client_costs_nothing_else(gated):
    g, pipeline = gated
    other = image_bytes(70, 50, 7)
    with serving(pipeline, max_wait_ms=0) as srv:
        batcher = srv.app.state.batcher
        busy: dict = {}
        holder = threading.Thread(target=lambda: busy.update(answer=EmbeddingClient(srv.host, srv.port).embed(other)))
        holder.start()
        assert g.entered.wait(WAIT_S)  # the model is busy with the other client's image
        dropped = image_bytes(90, 60, 8)
        sock = _raw_request(srv.port, len(dropped), dropped)
        wait_until(lambda: batcher.queued_images == 1, "the dropped client's image to be queued")
        sock.close()
        with EmbeddingClient(srv.host, srv.port) as c:
            wait_until(lambda: metric_value(c.metrics(), "navit_images_total", 'outcome="cancelled"') == 1,
                       "the server to notice the dropped client")
            assert batcher.queued_images == 0
            partial = _raw_request(srv.port, 50_000, b"\0" * 1_000)  # gone in the middle of its upload
            partial.close()
            wait_until(lambda: metric_value(c.metrics(), "navit_requests_total", 'code="499"') == 2,
                       "the server to notice the client gone mid-upload")
            g.open.set()
            holder.join(WAIT_S)
            status, body = c.embed(other)
            text = c.metrics()
    assert busy["answer"][0] == 200 and status == 200
    np.testing.assert_allclose(body["data"][0]["embedding"], busy["answer"][1]["data"][0]["embedding"], atol=1e-5)
    assert g.images == 2  # the two answered images; the dropped client's image was never computed
    assert metric_value(text, "navit_pending_images") == 0 and metric_value(text, "navit_queue_images") == 0


def test_healthz_and_metrics(pipe):
    with serving(pipe) as srv, EmbeddingClient(srv.host, srv.port) as c:
        status, health = c.request("GET", "/healthz")
        c.embed(image_bytes(30, 30, 0))
        text = c.metrics()
    assert status == 200 and json.loads(health)["status"] == "ok"
    for name in ("navit_requests_total", "navit_images_total", "navit_packs_total", "navit_images_per_pack_bucket",
                 "navit_requests_per_pack_bucket", "navit_queue_wait_seconds_bucket",
                 "navit_request_latency_seconds_bucket", "navit_model_seconds_bucket", "navit_queue_images"):
        assert name in text, name


@pytest.mark.parametrize("count", [1, 3])
def test_queued_images_run_without_waiting_once_draining(gated, count):
    g, pipeline = gated
    with serving(pipeline, max_wait_ms=600_000) as srv:  # nothing would run for 10 minutes but for the drain
        answers: dict = {}
        client = threading.Thread(target=lambda: answers.update(a=EmbeddingClient(srv.host, srv.port).embed(
            [(f"d{i}", image_bytes(40 + i, 40, i)) for i in range(count)])))
        client.start()
        wait_until(lambda: srv.app.state.batcher.queued_images == count, "the images to be queued")
        g.open.set()
        srv.stop(timeout=WAIT_S)
        client.join(WAIT_S)
    assert answers["a"][0] == 200 and len(answers["a"][1]["data"]) == count


def test_a_failing_model_call_is_an_error_of_its_images_only(runner, pipe):
    good, bad = image_bytes(160, 80, 1), image_bytes(96, 96, 2)
    bad_tokens = pipe.prepare(0, bad).num_tokens
    assert pipe.prepare(0, good).num_tokens != bad_tokens

    class Flaky:
        """Fails every pack that holds an image of the bad image's size; the others run."""

        concurrency = 1

        def activate(self):
            return runner.activate()

        def infer(self, pack):
            if bad_tokens in pack.seqlens.tolist():
                raise RuntimeError("device lost")
            return runner.infer(pack)

    from navit_deploy.runtime import Pipeline

    flaky = Pipeline(Flaky(), pipe.frontend, pipe.packer)
    with serving(flaky, max_wait_ms=200) as srv, EmbeddingClient(srv.host, srv.port) as c:
        status, body = c.embed([("ok.png", good), ("bad.png", bad)])
    assert status == 200
    assert body["data"][0]["tokens"] and body["data"][1]["error_type"] == "RuntimeError"
