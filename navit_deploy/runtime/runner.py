"""One runner interface for torch, ONNX Runtime and TensorRT (Polygraphy-style activate/infer/deactivate).

Runners validate what they are fed (names, dtypes, shapes, finiteness, pack limits) and raise
:class:`~navit_deploy.errors.InputValidationError` naming the problem. Torch-free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from navit_deploy.errors import InputValidationError
from navit_deploy.packing import PackedBatch

INPUT_NAMES = ("patches", "coords", "segment_ids", "cu_seqlens")
WINDOW_INPUTS = ("window_segment_ids", "window_cu_seqlens")  # windowed VLM towers take these two more
OUTPUT_NAMES = ("embeddings", "logits")  # a model without a classifier has the first one only
INPUT_DTYPES = {"patches": np.float32, "coords": np.int64, "segment_ids": np.int64, "cu_seqlens": np.int32}
WINDOW_DTYPES = {"window_segment_ids": np.int64, "window_cu_seqlens": np.int32}
_DTYPES = {**INPUT_DTYPES, **WINDOW_DTYPES}


@dataclass(frozen=True)
class RunnerOutput:
    """Per-image outputs of one pack, in pack order: ``embeddings [B, D]`` and, for a model with a classifier,
    ``logits [B, C]`` (float32; None otherwise); or, for a VLM tower, ``tokens [L / merge^2, D]``, the merged
    tokens of the whole pack (``embeddings`` None)."""

    embeddings: np.ndarray | None
    logits: np.ndarray | None = None
    tokens: np.ndarray | None = None


def tokens_output(tokens: np.ndarray, token_dim: int, path: object, fix: str) -> RunnerOutput:
    """A VLM tower's merged tokens as a :class:`RunnerOutput`, refused when their width is not the artifact's
    (``fix``: what to do about it, e.g. "re-export the model")."""
    from navit_deploy.errors import ArtifactMismatchError

    tokens = np.asarray(tokens, dtype=np.float32)
    if tokens.ndim != 2 or tokens.shape[1] != token_dim:
        raise ArtifactMismatchError(f"{path} returned tokens of shape {list(tokens.shape)}, but its artifact says "
                                    f"[blocks, {token_dim}]; {fix}")
    return RunnerOutput(None, None, tokens)


@dataclass(frozen=True)
class PackLimits:
    """What a backend accepts: the largest pack length and images per pack (e.g. a TensorRT profile)."""

    max_pack_len: int
    max_images: int
    min_pack_len: int = 1


def validate_inputs(feed: dict[str, np.ndarray], patch_dim: int, limits: PackLimits | None = None,
                    names: tuple[str, ...] = INPUT_NAMES) -> None:
    """Check names, dtypes, shapes, finiteness and limits of a model feed; raise a clear error otherwise."""
    missing = [n for n in names if n not in feed]
    extra = [n for n in feed if n not in names]
    if missing or extra:
        raise InputValidationError(f"feed must have exactly {list(names)}; missing {missing}, unexpected {extra}")
    for name in names:
        dtype = _DTYPES[name]
        if feed[name].dtype != dtype:
            raise InputValidationError(f"input {name!r} must be {np.dtype(dtype).name}, got {feed[name].dtype}")
    patches, coords, seg, cu = (feed[n] for n in INPUT_NAMES)
    if patches.ndim != 2 or patches.shape[1] != patch_dim:
        raise InputValidationError(f"'patches' must be [T, {patch_dim}], got {list(patches.shape)}")
    t = patches.shape[0]
    if coords.shape != (t, 2):
        raise InputValidationError(f"'coords' must be [{t}, 2], got {list(coords.shape)}")
    if seg.shape != (t,):
        raise InputValidationError(f"'segment_ids' must be [{t}], got {list(seg.shape)}")
    if cu.ndim != 1 or cu.shape[0] < 2:
        raise InputValidationError(f"'cu_seqlens' must be [B+1] with B >= 1, got {list(cu.shape)}")
    if cu[0] != 0 or np.any(np.diff(cu) <= 0) or cu[-1] > t:
        raise InputValidationError(f"'cu_seqlens' must start at 0, strictly increase and end <= {t}: {cu.tolist()[:8]}...")
    if not np.all(np.isfinite(patches)):
        raise InputValidationError(f"'patches' has {int((~np.isfinite(patches)).sum())} non-finite values")
    if np.any(coords < 0):
        raise InputValidationError("'coords' must be non-negative")
    if limits is not None:
        b = cu.shape[0] - 1
        if t > limits.max_pack_len or t < limits.min_pack_len:
            raise InputValidationError(f"pack of {t} tokens is outside this backend's range "
                                       f"[{limits.min_pack_len}, {limits.max_pack_len}]; use a smaller pack length")
        if b > limits.max_images:
            raise InputValidationError(f"pack has {b} images, more than this backend's limit of {limits.max_images}")
    if "window_cu_seqlens" in names:
        wseg, wcu = feed["window_segment_ids"], feed["window_cu_seqlens"]
        if wseg.shape != (t,) or wcu.ndim != 1 or wcu.shape[0] < 2:
            raise InputValidationError(f"'window_segment_ids' must be [{t}] and 'window_cu_seqlens' [W+1], got "
                                       f"{list(wseg.shape)}, {list(wcu.shape)}")
        if wcu[0] != 0 or np.any(np.diff(wcu) <= 0) or wcu[-1] != cu[-1]:
            raise InputValidationError("'window_cu_seqlens' must start at 0, strictly increase and end where "
                                       f"'cu_seqlens' ends ({int(cu[-1])}): {wcu.tolist()[:8]}...")


class Runner(ABC):
    """Base class: ``with runner: out = runner.infer(pack)``.

    Subclasses implement :meth:`_activate`, :meth:`_infer` and :meth:`_deactivate`.
    """

    name: str = "runner"
    precision: str = "fp32"
    #: How many :meth:`infer` calls the pipeline may run at once. 1 unless a runner is safe to call from
    #: several threads and gains from it (ONNX Runtime on CPU).
    concurrency: int = 1

    #: The model's inputs (six for a windowed VLM tower), its kind of output, and how its packs hold merge
    #: blocks and windows (None: a pooled model). Set from the artifact by the runners that have one.
    input_names: tuple[str, ...] = INPUT_NAMES
    output_kind: str = "pooled"
    windows: Any = None

    def __init__(self, patch_dim: int, limits: PackLimits | None = None) -> None:
        self.patch_dim = patch_dim
        self.limits = limits
        self.is_active = False

    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def infer(self, pack: PackedBatch | dict[str, np.ndarray]) -> RunnerOutput:
        """Run one pack; validates the feed first. Outputs are in pack order."""
        if not self.is_active:
            self.activate()
        feed = pack.model_inputs() if isinstance(pack, PackedBatch) else pack
        validate_inputs(feed, self.patch_dim, self.limits, self.input_names)
        spec = self.windows
        if spec is not None and spec.window and "window_cu_seqlens" in feed:
            most = spec.unit * spec.window ** 2  # the model's windows (the dense lowering's slots) hold no more
            longest = int(np.diff(feed["window_cu_seqlens"]).max())
            if longest > most:
                raise InputValidationError(f"a window of {longest} tokens is longer than the model's windows of {most}; "
                                           "pack with the runner's packer (Packer(windows=runner.windows))")
        out = self._infer(feed)
        b = feed["cu_seqlens"].shape[0] - 1
        if out.tokens is not None:
            rows = feed["patches"].shape[0] // max(1, self.windows.unit if self.windows is not None else 1)
            if out.tokens.shape[0] != rows:
                raise InputValidationError(f"{self.name} returned {out.tokens.shape[0]} token rows for a pack of "
                                           f"{rows} merge blocks")
            return out
        if out.embeddings is None or out.embeddings.shape[0] != b or (out.logits is not None and out.logits.shape[0] != b):
            got = None if out.embeddings is None else out.embeddings.shape[0]
            raise InputValidationError(f"{self.name} returned {got} rows for {b} images")
        return out

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> RunnerOutput: ...

    def _deactivate(self) -> None:
        return None
