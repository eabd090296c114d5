"""``navit embed`` in one process: batches of paths through :meth:`Pipeline.run`, one Parquet part each,
resumable. Torch-free (needs pyarrow).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from navit_deploy.embed import DEFAULT_BATCH
from navit_deploy.embed.store import PartStore, StoreState
from navit_deploy.embed.table import model_metadata, results_table
from navit_deploy.errors import ArtifactMismatchError
from navit_deploy.frontend import FrontendConfig
from navit_deploy.runtime import Pipeline
from navit_deploy.runtime.artifact import DeploymentArtifact, read_artifact


@dataclass
class EmbedSummary:
    """What one ``navit embed`` run did. ``images_per_s`` counts the images embedded by this run."""

    output: str
    engine: str
    inputs: int
    skipped: int
    embedded: int
    failed: int
    parts: int
    seconds: float
    images_per_s: float
    broken_parts: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def model_artifact(path: str | os.PathLike[str]) -> DeploymentArtifact:
    """The artifact of a model or engine without opening a session (the sidecar, else the ONNX metadata)."""
    try:
        return read_artifact(path)
    except ArtifactMismatchError:
        if Path(path).suffix != ".onnx":
            raise
        from navit_deploy.runtime.onnx_runner import OnnxRunner

        return OnnxRunner(path, reference_ops=True).artifact


def output_metadata(model_path: str | os.PathLike[str], artifact: DeploymentArtifact,
                    frontend: FrontendConfig | None = None) -> dict[str, Any]:
    """The metadata every part carries (model and front end), also what a resumed run must match."""
    return model_metadata(model_path, artifact, frontend or artifact.frontend)


def resume_state(out: str | os.PathLike[str], paths: Sequence[str], metadata: dict[str, Any]
                 ) -> tuple[PartStore, StoreState, list[str]]:
    """The output folder, what it already holds, and the paths still to embed (input order)."""
    store = PartStore(out)
    state = store.scan(metadata)
    return store, state, [p for p in paths if p not in state.done]


def even_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of ``ceil(n / batch_size)`` batches whose sizes differ by at most one (the first ones
    take the remainder), the way Ray Data's ``from_items`` cuts blocks."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k = -(-n // batch_size)
    size, extra = divmod(n, k) if k else (0, 0)
    return [(i * size + min(i, extra), (i + 1) * size + min(i + 1, extra)) for i in range(k)]


def embed_paths(paths: Sequence[str], pipeline: Pipeline, out: str | os.PathLike[str], metadata: dict[str, Any],
                batch_size: int = DEFAULT_BATCH, progress: bool = True,
                on_commit: Callable[[Path], None] | None = None) -> EmbedSummary:
    """Embed ``paths`` into the output folder ``out``, skipping paths it already holds.

    Each batch of at most ``batch_size`` paths (see :func:`even_batches`) is one :meth:`Pipeline.run` (the runtime's overlapped front end
    and packing) and one atomically committed part, so a crash loses at most the batch in flight.
    ``on_commit`` is called with each new part's path.
    """
    from tqdm import tqdm

    store, state, todo = resume_state(out, paths, metadata)
    dim = int(metadata["dim"])
    failed = parts = 0
    t0 = time.perf_counter()
    with tqdm(total=len(paths), initial=len(paths) - len(todo), unit="img", desc="embed", disable=not progress,
              dynamic_ncols=True) as bar:
        for start, end in even_batches(len(todo), batch_size):
            chunk = list(todo[start:end])
            results = pipeline.run(chunk)
            part = store.commit(results_table(chunk, results, dim, metadata))
            parts += 1
            failed += sum(not r.ok for r in results)
            bar.update(len(chunk))
            if on_commit is not None:
                on_commit(part)
    seconds = time.perf_counter() - t0
    return EmbedSummary(str(out), "local", len(paths), len(paths) - len(todo), len(todo), failed, parts,
                        round(seconds, 3), round(len(todo) / seconds, 2) if todo and seconds > 0 else 0.0,
                        state.broken)


def embed_files(paths: Sequence[str], model_path: str | os.PathLike[str], out: str | os.PathLike[str],
                provider: str = "cpu", threads: int | None = None, frontend: FrontendConfig | None = None,
                batch_size: int = DEFAULT_BATCH, progress: bool = True,
                on_commit: Callable[[Path], None] | None = None) -> EmbedSummary:
    """Open the model (``.onnx`` or an engine), embed ``paths`` into ``out``, close the model."""
    from navit_deploy.runtime.open import open_runner, pipeline_for

    runner, artifact = open_runner(model_path, provider=provider, threads=threads)
    artifact.require_pooled("embedding files into a table")
    with runner:
        pipe = pipeline_for(runner, artifact, frontend=frontend)
        return embed_paths(paths, pipe, out, output_metadata(model_path, artifact, pipe.frontend), batch_size,
                           progress, on_commit)
