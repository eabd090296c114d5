"""Per-image results, in the caller's order, with per-image errors kept. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class ImageResult:
    """What happened to one input image: outputs on success, a typed error otherwise.

    ``output_kind`` says which outputs a success carries: ``"pooled"``, one ``embedding`` (and ``logits`` with
    a classifier); ``"tokens"``, a VLM tower's ``visual_tokens [n / merge^2, D]`` in the model's own order
    (``embedding`` is None).
    """

    index: int
    name: str
    embedding: np.ndarray | None = None
    logits: np.ndarray | None = None
    tokens: int = 0
    grid: tuple[int, int] | None = None
    resized_size: tuple[int, int] | None = None
    original_size: tuple[int, int] | None = None
    error: str | None = None
    error_type: str | None = None
    output_kind: str = "pooled"
    visual_tokens: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def vector(self) -> np.ndarray | None:
        """The output as one vector (the embedding, or the visual tokens flattened), for comparisons."""
        if self.output_kind == "tokens":
            return None if self.visual_tokens is None else self.visual_tokens.reshape(-1)
        return self.embedding

    @property
    def top1(self) -> int:
        assert self.logits is not None, "no logits for a failed image"
        return int(np.argmax(self.logits))

    def topk(self, labels: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely labels with softmax scores."""
        if self.logits is None:
            return []
        probs = softmax(self.logits.astype(np.float64))
        order = np.argsort(-probs)[:k]
        return [(labels[i] if i < len(labels) else str(i), float(probs[i])) for i in order]

    def to_json(self, labels: Sequence[str], k: int = 5, with_embedding: bool = False) -> dict[str, Any]:
        """A JSON-ready dict: the sizes and, on success, ``top_k`` (with logits and ``k > 0``) and the
        embedding (or visual tokens) as lists when ``with_embedding``; ``error``/``error_type`` on failure."""
        d: dict[str, Any] = {"index": self.index, "path": self.name}
        if not self.ok:
            d["error"] = self.error
            d["error_type"] = self.error_type
            return d
        if self.output_kind == "tokens":
            assert self.visual_tokens is not None
            d.update({"output_kind": "tokens", "visual_tokens_shape": list(self.visual_tokens.shape),
                      "tokens": self.tokens, "grid": list(self.grid) if self.grid else None,
                      "resized_size": list(self.resized_size) if self.resized_size else None,
                      "original_size": list(self.original_size) if self.original_size else None})
            if with_embedding:
                d["visual_tokens"] = self.visual_tokens.tolist()
            return d
        assert self.embedding is not None
        if self.logits is not None and k > 0:
            d["top_k"] = [{"label": lab, "score": round(s, 6)} for lab, s in self.topk(labels, k)]
        d.update({
            "embedding_norm": float(np.linalg.norm(self.embedding)),
            "tokens": self.tokens,
            "grid": list(self.grid) if self.grid else None,
            "resized_size": list(self.resized_size) if self.resized_size else None,
            "original_size": list(self.original_size) if self.original_size else None,
        })
        if with_embedding:
            d["embedding"] = self.embedding.tolist()
        return d
