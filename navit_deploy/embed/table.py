"""The rows ``navit embed`` writes: one per input, as an Arrow table. Torch-free (needs pyarrow).

Columns: ``path`` (string), ``embedding`` (fixed-size list of float32, null on failure), ``tokens``
(int32), ``grid`` (fixed-size list of two int32: rows, columns of patches), ``error_type`` and ``error``
(null on success). The schema's metadata (key ``navit_deploy``) names the model that wrote the rows, so
a resumed run refuses to mix embeddings of two models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from navit_deploy.frontend import FrontendConfig
from navit_deploy.runtime import ImageResult
from navit_deploy.runtime.artifact import DeploymentArtifact

METADATA_KEY = b"navit_deploy"


def embedding_schema(dim: int, model: dict[str, Any] | None = None) -> pa.Schema:
    """The output schema for ``dim``-wide embeddings, with ``model`` (see :func:`model_metadata`) attached."""
    schema = pa.schema([
        pa.field("path", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim)),
        pa.field("tokens", pa.int32()),
        pa.field("grid", pa.list_(pa.int32(), 2)),
        pa.field("error_type", pa.string()),
        pa.field("error", pa.string()),
    ])
    return schema.with_metadata({METADATA_KEY: json.dumps(model, sort_keys=True)}) if model else schema


def model_metadata(model_path: str | Path, artifact: DeploymentArtifact, frontend: FrontendConfig) -> dict[str, Any]:
    """Who wrote the rows: the model file's name, weights hash, lowering, precision, width and the front
    end's budget."""
    budget = {k: frontend.to_dict()[k] for k in ("patch_size", "budget", "max_patches", "upscale",
                                                 "min_pixels", "max_pixels", "square_grid")}
    return {"model": Path(model_path).name, "weights_sha256": artifact.weights_sha256,
            "lowering": artifact.lowering, "precision": artifact.precision, "dim": artifact.dim,
            "frontend": budget}


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether rows written under metadata ``a`` and ``b`` are embeddings of the same weights, width and
    front-end budget (so that they can sit in one output)."""
    return all(a.get(k) == b.get(k) for k in ("weights_sha256", "dim", "frontend"))


def results_table(paths: Sequence[str], results: Sequence[ImageResult], dim: int,
                  model: dict[str, Any] | None = None) -> pa.Table:
    """One row per ``paths[i]`` from ``results[i]`` (the pipeline's per-input results, in input order)."""
    if len(paths) != len(results):
        raise ValueError(f"{len(paths)} paths but {len(results)} results")
    ok = np.array([r.ok for r in results], dtype=bool)
    emb = np.zeros((len(results), dim), dtype=np.float32)
    grid = np.zeros((len(results), 2), dtype=np.int32)
    for i, r in enumerate(results):
        if r.ok:
            assert r.embedding is not None and r.grid is not None
            emb[i] = r.embedding
            grid[i] = r.grid
    invalid = pa.array(~ok)
    columns = [
        pa.array(list(paths), pa.string()),
        pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim, mask=invalid),
        pa.array([r.tokens if r.ok else None for r in results], pa.int32()),
        pa.FixedSizeListArray.from_arrays(pa.array(grid.reshape(-1)), 2, mask=invalid),
        pa.array([r.error_type for r in results], pa.string()),
        pa.array([r.error for r in results], pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=embedding_schema(dim, model))
