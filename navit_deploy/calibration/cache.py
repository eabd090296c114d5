"""Calibration cache: tensor ranges keyed by what produced them, so a re-run skips calibration inference.

The key hashes the FP32 model file, the calibration images (their keys: relative path + size + mtime
for files, name for builtin/procedural images), the front end and packing, the calibration method and
its options, and the set of tensors calibrated. One JSON file per key (ONNX Runtime's
``save_tensors_data`` format, written atomically) plus a ``.key.json`` describing it. Location:
``$NAVIT_CACHE_DIR/calibration``, else ``$XDG_CACHE_HOME/navit_deploy/calibration``, else
``~/.cache/navit_deploy/calibration``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    if os.environ.get("NAVIT_CACHE_DIR"):
        return Path(os.environ["NAVIT_CACHE_DIR"]) / "calibration"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "navit_deploy" / "calibration"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_key(**parts: Any) -> str:
    """A stable digest of ``parts`` (JSON-serialisable values)."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class CalibrationCache:
    """Load/save ONNX Runtime ``TensorsData`` under a key; ``directory=None`` uses :func:`default_cache_dir`."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.directory / f"{key[:32]}.ranges.json"

    def load(self, key: str):  # -> TensorsData | None
        """The cached ranges for ``key``, or ``None`` (missing or unreadable entries are misses)."""
        from onnxruntime.quantization.calibrate import load_tensors_data

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return load_tensors_data(p)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def description(self, key: str) -> dict[str, Any]:
        """What :meth:`save` stored next to the ranges (empty if missing or unreadable)."""
        try:
            return json.loads(self.path(key).with_suffix("").with_suffix(".key.json").read_text())
        except (OSError, ValueError):
            return {}

    def save(self, key: str, ranges, description: dict[str, Any]) -> Path:
        """Store ``ranges`` (atomically) and a readable description of the key next to them."""
        from onnxruntime.quantization.calibrate import save_tensors_data

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        save_tensors_data(ranges, p)  # temp file + os.replace
        tmp = p.with_suffix(".key.json.tmp")
        tmp.write_text(json.dumps({"key": key, **description}, indent=1, sort_keys=True, default=str))
        os.replace(tmp, p.with_suffix("").with_suffix(".key.json"))
        return p
