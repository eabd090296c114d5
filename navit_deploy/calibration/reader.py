"""Calibration data for INT8: images -> the model's front end -> the model's packer -> ONNX feeds.

:class:`CalibrationReader` follows ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next()``
returns a feed dict, then ``None`` when exhausted; ``rewind()`` starts over) and feeds exactly what
inference feeds: the artifact's front end (patch size, budget, normalization) and its packer (pack
length, images per pack), so the calibrated ranges are those of deployment packs, padding included.

Sources, in a deterministic order:

* an image folder (``--calib DIR``): files sorted by relative path, subfolders included; with more
  files than ``max_images``, an evenly spaced subset (so a ``root/<class>/`` tree keeps every class);
* the default set: the builtin sample images (real photographs and scans plus generated camera and
  document frames), then procedural images of the *train* split (never the held-out test split).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from navit_deploy.calibration.errors import CalibrationDataError, CalibrationImagesUnreadableError
from navit_deploy.errors import ArtifactMismatchError, ImageError, PackingError
from navit_deploy.frontend import FrontendConfig, PreparedImage, prepare_image
from navit_deploy.packing import PackedBatch, Packer
from navit_deploy.runtime.artifact import DeploymentArtifact

MIN_CALIBRATION_IMAGES = 8
DEFAULT_MAX_IMAGES = 128
READER_VERSION = 1  # bump when what the reader feeds changes (invalidates calibration caches)


@dataclass(frozen=True)
class CalibrationImage:
    """One calibration image: a stable ``key`` (for caching), a display ``name`` and a loader."""

    key: str
    name: str
    load: Callable[[], Any]  # -> an ImageSource (path, bytes, PIL image, array)


def folder_images(root: str | os.PathLike, max_images: int | None = DEFAULT_MAX_IMAGES) -> list[CalibrationImage]:
    """Images under ``root`` (recursive, sorted by relative path); an evenly spaced subset if there are more."""
    from navit_deploy.data.image_folder import list_images

    base = Path(root).expanduser()
    paths = list_images(base, recursive=True)  # ConfigError for a missing folder / not a folder
    if max_images is not None and len(paths) > max_images:
        idx = np.unique(np.round(np.linspace(0, len(paths) - 1, max_images)).astype(np.int64))
        paths = [paths[i] for i in idx]
    out = []
    for p in paths:
        try:
            st = p.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "unreadable"
        rel = p.relative_to(base).as_posix()
        out.append(CalibrationImage(f"file:{rel}:{stamp}", str(p), lambda p=p: str(p)))
    return out


def default_images(max_images: int = DEFAULT_MAX_IMAGES, seed: int = 0) -> list[CalibrationImage]:
    """The builtin sample images, then procedural *train*-split images, ``max_images`` in all."""
    from navit_deploy.data.procedural import ProceduralDataset
    from navit_deploy.data.sample_images import builtin_sample_images

    out: list[CalibrationImage] = []
    for name, img in builtin_sample_images()[:max_images]:
        out.append(CalibrationImage(f"builtin:{name}", f"builtin:{name}", lambda img=img: img.copy()))
    rest = max(0, max_images - len(out))
    if rest:
        data = ProceduralDataset("train", rest, seed=seed)
        for i in range(rest):
            out.append(CalibrationImage(f"procedural-train:{seed}:{i}", f"procedural-train[{i}]",
                                        lambda i=i: data[i][0]))
    return out


class CalibrationReader:
    """ONNX Runtime ``CalibrationDataReader``: packed feeds of calibration images, deterministic.

    ``frontend``, ``pack_len`` and ``max_images_per_pack`` must be the model's (see :meth:`for_artifact`
    and :meth:`check_matches`). Images are prepared on first use (``prepare()``; progress bar unless
    ``progress=False``). Images that fail (undecodable, over budget) are skipped and listed in
    :attr:`failures`; fewer than ``min_images`` usable ones raise :class:`CalibrationDataError`.
    """

    def __init__(self, images: Sequence[CalibrationImage], frontend: FrontendConfig, pack_len: int,
                 max_images_per_pack: int, *, max_images: int | None = None, progress: bool = True,
                 min_images: int = MIN_CALIBRATION_IMAGES, workers: int | None = None, description: str = "",
                 windows: Any = None) -> None:
        if max_images is not None and max_images < 1:
            raise CalibrationDataError(f"max_images must be >= 1, got {max_images}")
        self.images = list(images)[:max_images] if max_images is not None else list(images)
        self.frontend = frontend
        self.pack_len = int(pack_len)
        self.max_images_per_pack = int(max_images_per_pack)
        self.windows = windows  # a VLM tower's merge blocks and windows (WindowSpec), None otherwise
        self.progress = progress
        self.min_images = min_images
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.description = description or f"{len(self.images)} images"
        self.failures: list[tuple[str, str]] = []
        self.usable = 0
        self.tokens = 0
        self._packs: list[PackedBatch] | None = None
        self._pos = 0
        self._end: int | None = None

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def for_artifact(cls, artifact: DeploymentArtifact, calib: str | os.PathLike | None = None,
                     max_images: int = DEFAULT_MAX_IMAGES, **kw: Any) -> CalibrationReader:
        """The reader for a model: its front end and packing, over ``calib`` (a folder) or the default set."""
        if calib is not None:
            images = folder_images(calib, max_images)
            what = f"folder {calib}"
        else:
            images = default_images(max_images)
            what = "builtin samples + procedural train split"
        return cls(images, artifact.frontend, artifact.pack_len, artifact.max_images, max_images=max_images,
                   description=f"{what} ({len(images)} images)", windows=artifact.windows, **kw)

    def check_matches(self, artifact: DeploymentArtifact) -> None:
        """Raise :class:`ArtifactMismatchError` unless this reader feeds what the model's runtime feeds."""
        problems = []
        if self.frontend != artifact.frontend:
            mine, theirs = self.frontend.to_dict(), artifact.frontend.to_dict()
            diff = {k: (mine[k], theirs[k]) for k in theirs if mine.get(k) != theirs[k]}
            problems.append("front end differs (" + ", ".join(f"{k}: calibration {a!r} vs model {b!r}"
                                                              for k, (a, b) in diff.items()) + ")")
        if self.pack_len != artifact.pack_len:
            problems.append(f"pack length {self.pack_len} vs the model's {artifact.pack_len}")
        if self.max_images_per_pack != artifact.max_images:
            problems.append(f"images per pack {self.max_images_per_pack} vs the model's {artifact.max_images}")
        if problems:
            raise ArtifactMismatchError("calibration data would not look like deployment data: " + "; ".join(problems)
                                        + ". Calibrate with the model's own front end and packing "
                                        "(CalibrationReader.for_artifact), or re-export the model with these settings")

    # --- identity (cache key) ----------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What determines the feeds, without preparing anything: image keys, front end, packing."""
        keys = hashlib.sha256("\n".join(i.key for i in self.images).encode()).hexdigest()
        return {"images": len(self.images), "images_sha256": keys, "frontend": self.frontend.to_dict(),
                "pack_len": self.pack_len, "max_images_per_pack": self.max_images_per_pack,
                "reader_version": READER_VERSION}

    # --- preparation -------------------------------------------------------------------------------
    def _prepare_one(self, item: CalibrationImage) -> PreparedImage | str:
        try:
            prepared = prepare_image(item.load(), self.frontend)
        except ImageError as exc:
            return f"{type(exc).__name__}: {exc}"
        except (OSError, ValueError) as exc:  # a loader that fails outside the front end's typed errors
            return f"{type(exc).__name__}: {exc}"
        if prepared.num_tokens > self.pack_len:
            return f"BudgetError: {prepared.num_tokens} tokens exceed the pack length {self.pack_len}"
        return prepared

    def prepare(self) -> CalibrationReader:
        """Run the front end on every image and pack them (once). Idempotent."""
        if self._packs is not None:
            return self
        if not self.images:
            raise CalibrationImagesUnreadableError(f"no calibration images in {self.description}; need at least "
                                                   f"{self.min_images}")
        bar = tqdm(total=len(self.images), disable=not self.progress, desc="calibration images", unit="img")
        prepared: list[PreparedImage] = []
        self.failures = []

        def work(item: CalibrationImage) -> PreparedImage | str:
            return self._prepare_one(item)

        with ThreadPoolExecutor(self.workers) as pool:
            for item, res in zip(self.images, pool.map(work, self.images)):  # map keeps the input order
                if isinstance(res, str):
                    self.failures.append((item.name, res))
                else:
                    prepared.append(res)
                bar.update(1)
        bar.close()
        self.usable = len(prepared)
        if not prepared:
            first = "; ".join(f"{n}: {e}" for n, e in self.failures[:3])
            raise CalibrationImagesUnreadableError(f"all {len(self.images)} calibration images failed ({first}"
                                                   f"{'; ...' if len(self.failures) > 3 else ''})")
        if self.usable < self.min_images:
            raise CalibrationDataError(f"only {self.usable} usable calibration image(s) of {len(self.images)} in "
                                       f"{self.description}; INT8 calibration needs at least {self.min_images} "
                                       f"({len(self.failures)} failed)")
        try:
            self._packs = Packer(self.pack_len, self.max_images_per_pack, windows=self.windows).pack(prepared)
        except PackingError as exc:  # pragma: no cover - prepare() already dropped images longer than a pack
            raise CalibrationDataError(f"cannot pack the calibration images: {exc}") from exc
        self.tokens = sum(p.num_tokens for p in prepared)
        return self

    # --- CalibrationDataReader protocol ----------------------------------------------------------------
    @property
    def packs(self) -> list[PackedBatch]:
        return self.prepare()._packs or []

    def __len__(self) -> int:
        return len(self.packs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        packs = self.packs
        end = len(packs) if self._end is None else min(self._end, len(packs))
        if self._pos >= end:
            return None
        self._pos += 1
        return packs[self._pos - 1].model_inputs()

    def rewind(self) -> None:
        self._pos = 0
        self._end = None

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict the next pass to packs ``[start_index, end_index)`` (ONNX Runtime's strided calibration)."""
        self._pos, self._end = int(start_index), int(end_index)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (feed := self.get_next()) is not None:
            yield feed

    def chunks(self, size: int) -> Iterator[_ChunkReader]:
        """Sub-readers of at most ``size`` packs each, in order (bounded memory while collecting ranges)."""
        n = len(self)
        for start in range(0, n, size):
            yield _ChunkReader(self.packs[start:start + size])


class _ChunkReader:
    def __init__(self, packs: list[PackedBatch]) -> None:
        self._packs = packs
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self._packs):
            return None
        self._pos += 1
        return self._packs[self._pos - 1].model_inputs()

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return len(self._packs)
