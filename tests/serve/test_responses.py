"""What one image's answer holds, and that its JSON gives back the very float32 values the model computed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from navit_deploy.runtime import ImageResult
from navit_deploy.serve.app import NumpyJSONResponse, result_entry

LABELS = [f"class{i}" for i in range(10)]


def _result(kind: str, seed: int = 0) -> ImageResult:
    rng = np.random.default_rng(seed)
    common = dict(index=2, name="a.jpg", tokens=12, grid=(3, 4), resized_size=(64, 48), original_size=(640, 480))
    if kind == "tokens":
        return ImageResult(**common, output_kind="tokens",
                           visual_tokens=rng.standard_normal((3, 8)).astype(np.float32)[:, ::2])  # not contiguous
    # Values float64 cannot write in few digits: 1/3, tiny and huge magnitudes, negative zero.
    emb = np.concatenate([rng.standard_normal(60), [1 / 3, 1e-30, -3e15, -0.0]]).astype(np.float32)
    return ImageResult(**common, embedding=emb, logits=rng.standard_normal(10).astype(np.float32))


def _round_trip(entry: dict) -> dict:
    return json.loads(NumpyJSONResponse({"data": [entry]}).body)["data"][0]


def test_embedding_reads_back_as_the_same_float32_values():
    res = _result("pooled")
    back = _round_trip(result_entry(res, LABELS))
    got = np.asarray(back["embedding"], dtype=np.float32)
    assert got.dtype == res.embedding.dtype and np.array_equal(got, res.embedding)
    assert np.signbit(got[-1])  # negative zero stays negative
    assert back["index"] == 2 and back["name"] == "a.jpg" and back["grid"] == [3, 4] and back["tokens"] == 12
    assert back["embedding_norm"] == pytest.approx(float(np.linalg.norm(res.embedding)))
    assert "top_k" not in back  # not asked for


def test_top_k_only_when_asked_and_ordered_by_score():
    res = _result("pooled")
    back = _round_trip(result_entry(res, LABELS, top_k=3))
    assert [t["label"] for t in back["top_k"]] == [LABELS[i] for i in np.argsort(-res.logits)[:3]]
    assert back["top_k"] == res.to_json(LABELS, k=3)["top_k"]


def test_visual_tokens_keep_their_shape_and_values():
    res = _result("tokens")
    back = _round_trip(result_entry(res, LABELS))
    got = np.asarray(back["visual_tokens"], dtype=np.float32)
    assert got.shape == res.visual_tokens.shape and np.array_equal(got, res.visual_tokens)
    assert back["visual_tokens_shape"] == [3, 4] and "embedding" not in back


def test_a_failed_image_answers_its_error_only():
    res = ImageResult(1, "bad.png", error="cannot decode bad.png", error_type="ImageDecodeError")
    back = _round_trip(result_entry(res, LABELS, top_k=3))
    assert back == {"index": 1, "name": "bad.png", "error": "cannot decode bad.png", "error_type": "ImageDecodeError"}
