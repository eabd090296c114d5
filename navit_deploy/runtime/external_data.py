"""ONNX models over 2 GB: weights as external data in one file beside the model. Torch-free.

A protobuf file cannot exceed 2 GB, and a real VLM tower (Qwen2.5-VL: ~670M parameters, ~2.7 GB in FP32) does.
Such a model is saved as ``model.onnx`` (the graph, small) plus ``model.onnx.data`` (the weights), the data
file's ``location`` relative to the model so the pair can be moved together. Everything that reads a model
path goes through here to save one, to list the data files one needs, and to check that they are present.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from navit_deploy.errors import ArtifactMismatchError

# Initializer bytes above which a model is saved with external data: under protobuf's 2 GiB with room for the graph.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
ARTIFACT_KEY = "external_data"  # DeploymentArtifact.extra key naming the data file


def data_file_name(model_path: str | os.PathLike[str]) -> str:
    """The data file written for ``model_path``: ``m.onnx`` -> ``m.onnx.data``."""
    return Path(model_path).name + ".data"


def _tensors(model: Any):
    from onnx.external_data_helper import _get_all_tensors  # graph, subgraphs (Loop bodies) and attributes

    return _get_all_tensors(model)


def initializer_bytes(model: Any) -> int:
    """Bytes of the model's tensors (initializers, constants, subgraphs'), held inline or described as external."""
    from onnx.external_data_helper import uses_external_data

    total = 0
    for t in _tensors(model):
        if uses_external_data(t):
            total += int({e.key: e.value for e in t.external_data}.get("length", 0) or 0)
        else:
            total += t.ByteSize()
    return total


def needs_external_data(model: Any, threshold: int | None = None) -> bool:
    """Whether ``model``'s tensors exceed ``threshold`` bytes (None: :data:`EXTERNAL_DATA_THRESHOLD`, read at call
    time, so the intermediate files of quantization follow it too)."""
    return initializer_bytes(model) > (EXTERNAL_DATA_THRESHOLD if threshold is None else threshold)


def save_onnx(model: Any, path: str | os.PathLike[str], threshold: int | None = None,
              location: str | None = None) -> str | None:
    """Save ``model`` at ``path``; above ``threshold`` initializer bytes (see :func:`needs_external_data`), its
    tensors go to ONE data file beside it (``location``, default ``<path name>.data``); a data file already there
    (an earlier, larger save) is removed either way. Returns the data file name, or None for a self-contained file.

    With external data the tensors in ``model`` are left pointing at the file (their bytes are no longer in the
    proto): save a copy if the proto is needed afterwards."""
    import onnx

    path = Path(path)
    external = needs_external_data(model, threshold)
    location = location or data_file_name(path)
    data = path.with_name(location)
    if data.exists():  # onnx appends to an existing data file; a self-contained save leaves it stale
        data.unlink()
    if not external:
        onnx.save_model(model, str(path))
        return None
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
    return location


@dataclass(frozen=True)
class DataFile:
    """An external data file a model needs: its path, the bytes the model reads from it, and its stat at check."""

    path: Path
    needed: int
    size: int
    mtime_ns: int

    def stat_key(self) -> tuple[int, int]:
        return self.size, self.mtime_ns


def required_files(model: Any, model_path: str | os.PathLike[str]) -> dict[Path, int]:
    """Data files the model (loaded with ``load_external_data=False``) refers to, and how many bytes of each it
    reads (the largest offset + length)."""
    from onnx.external_data_helper import uses_external_data

    base = Path(model_path).parent
    need: dict[Path, int] = {}
    for t in _tensors(model):
        if not uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        p = base / info["location"]
        need[p] = max(need.get(p, 0), end)
    return need


def check_data_files(model: Any, model_path: str | os.PathLike[str]) -> tuple[DataFile, ...]:
    """The model's external data files, each present and long enough; else an :class:`ArtifactMismatchError`
    naming the file and saying to copy it beside the model. Empty for a self-contained model."""
    return check_required(required_files(model, model_path), model_path)


def check_required(required: dict[Path, int], model_path: str | os.PathLike[str]) -> tuple[DataFile, ...]:
    """:func:`check_data_files` on the output of :func:`required_files`."""
    name = Path(model_path).name
    out = []
    for p, needed in required.items():
        if not p.is_file():
            raise ArtifactMismatchError(f"{name} keeps its weights in {p.name} (ONNX external data), which is missing "
                                        f"from {p.parent}: copy {p.name} beside {name} (the two files travel together)")
        st = p.stat()
        if st.st_size < needed:
            raise ArtifactMismatchError(f"{p} is truncated ({st.st_size} bytes, {name} reads {needed}): an interrupted "
                                        f"copy? Copy {p.name} beside {name} again, or re-export")
        out.append(DataFile(p, needed, st.st_size, st.st_mtime_ns))
    return tuple(out)


def files_size(model_path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a model and its external data files (what a copy moves)."""
    return Path(model_path).stat().st_size + sum(df.size for df in data_files_of(model_path))


def files_sha256(model_path: str | os.PathLike[str]) -> str:
    """sha256 of a model file, or for a model with external data, of its graph's and data files' hashes (reads
    every byte: for caches keyed on the weights, not for every activation)."""
    import hashlib

    from navit_deploy.runtime.artifact import sha256_file

    graph = sha256_file(model_path)
    files = data_files_of(model_path)
    if not files:
        return graph
    h = hashlib.sha256(graph.encode())
    for df in files:
        h.update(f"{df.path.name}:{sha256_file(df.path)}".encode())
    return h.hexdigest()


def data_files_of(model_path: str | os.PathLike[str]) -> tuple[DataFile, ...]:
    """:func:`check_data_files` for a model path (reads the graph only, not the weights)."""
    import onnx

    return check_data_files(onnx.load(str(model_path), load_external_data=False), model_path)
