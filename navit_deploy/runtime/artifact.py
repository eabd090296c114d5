"""The deployment artifact: everything the runtime needs travels with the ONNX file. Torch-free.

Stored twice, identically: as ONNX metadata (key ``navit_deploy``) and as a JSON sidecar
``<model>.onnx.json`` (readable without parsing the model, and by the TensorRT runner for engines).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from navit_deploy.errors import ArtifactMismatchError
from navit_deploy.frontend.config import FrontendConfig

METADATA_KEY = "navit_deploy"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DeploymentArtifact:
    """Front end, packing, labels, lowering and provenance of an exported NaViT.

    ``output_kind``: ``"pooled"`` (one embedding per image, and logits with a classifier) or ``"tokens"`` (a VLM
    tower: merged visual tokens per image, ``token_dim`` wide; artifacts written before this field read as
    pooled). ``inputs``: the model's input names (six for a windowed tower); ``window``: a window's side in
    merged tokens (0: none); the merge size is the front end's.
    """

    frontend: FrontendConfig
    labels: tuple[str, ...]
    lowering: str
    precision: str
    weights_sha256: str
    dim: int
    num_heads: int
    head_dim: int
    pack_len: int = 1024
    max_images: int = 64
    opset: int = 18
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ("embeddings", "logits")  # ("embeddings",): no classifier
    family: str = "navit"  # the architecture family the model was imported from
    output_kind: str = "pooled"
    inputs: tuple[str, ...] = ("patches", "coords", "segment_ids", "cu_seqlens")
    window: int = 0
    token_dim: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frontend"] = self.frontend.to_dict()
        d["labels"] = list(self.labels)
        d["outputs"] = list(self.outputs)
        d["inputs"] = list(self.inputs)
        return d

    @property
    def has_logits(self) -> bool:
        return "logits" in self.outputs

    @property
    def windows(self):  # -> WindowSpec | None (packing imports stay out of the artifact's import time)
        """How packs for this model hold merge blocks and windows; None for a pooled model."""
        if self.output_kind != "tokens":
            return None
        from navit_deploy.packing.windows import WindowSpec

        return WindowSpec(self.frontend.merge_size, self.window)

    def require_pooled(self, what: str) -> None:
        """Refuse a tokens artifact where one pooled vector per image is needed (``what``: the command)."""
        require_pooled(self.output_kind, self.family, what)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeploymentArtifact":
        try:
            kw = dict(d)
            if kw.get("format_version") != FORMAT_VERSION:
                raise ArtifactMismatchError(f"artifact format {kw.get('format_version')} is not {FORMAT_VERSION}; "
                                            "re-export the model with this version of navit-deploy")
            kw["frontend"] = FrontendConfig.from_dict(kw["frontend"])
            kw["labels"] = tuple(kw["labels"])
            for key in ("outputs", "inputs"):
                if key in kw:
                    kw[key] = tuple(kw[key])
            if kw.get("output_kind", "pooled") not in ("pooled", "tokens"):
                raise ArtifactMismatchError(f"output_kind must be 'pooled' or 'tokens', got {kw['output_kind']!r}")
            return cls(**kw)
        except (KeyError, TypeError) as exc:
            raise ArtifactMismatchError(f"not a navit-deploy artifact description ({exc})") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def with_(self, **changes: Any) -> "DeploymentArtifact":
        d = self.to_dict()
        d.update(changes)
        return DeploymentArtifact.from_dict(d)


def require_pooled(output_kind: str, family: str, what: str) -> None:
    """Refuse a model whose ``output_kind`` is not one pooled vector per image where ``what`` (a command) needs
    one: a :class:`~navit_deploy.errors.OutputKindError` naming what the model returns instead."""
    if output_kind != "pooled":
        from navit_deploy.errors import OutputKindError

        raise OutputKindError(f"{what} needs one pooled embedding per image, but this model ({family}) returns "
                              f"{output_kind} (merged visual tokens for a language model); use `navit infer` or the "
                              "Pipeline, whose results carry visual_tokens")


def sidecar_path(model_path: str | Path) -> Path:
    return Path(str(model_path) + ".json")


def write_sidecar(model_path: str | Path, artifact: DeploymentArtifact) -> Path:
    path = sidecar_path(model_path)
    path.write_text(artifact.to_json() + "\n")
    return path


def check_io_shapes(artifact: DeploymentArtifact, inputs: dict[str, list[Any]], outputs: dict[str, list[Any]]) -> list[str]:
    """What in a model's input/output shapes contradicts its artifact (patch width, embedding width); empty when
    nothing does. Symbolic dimensions (names, None) are not checked."""
    want = {"patches": (inputs, artifact.frontend.patch_dim, "patch width (C*p*p)"),
            "coords": (inputs, 2, "coordinate width")}
    if artifact.output_kind == "tokens":
        want["tokens"] = (outputs, artifact.token_dim, "visual token width")
    else:
        want["embeddings"] = (outputs, artifact.dim, "embedding width")
    if artifact.has_logits:
        want["logits"] = (outputs, len(artifact.labels) or None, "number of classes")
    problems = []
    for name, (shapes, size, what) in want.items():
        shape = shapes.get(name)
        if shape is None or len(shape) != 2:
            problems.append(f"{name!r} should be 2-D, got {shape}")
            continue
        if isinstance(shape[1], int) and size is not None and shape[1] != size:
            problems.append(f"{name!r} has {what} {shape[1]}, the artifact says {size}")
    return problems


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes: ties artifacts to the exact file they describe."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _parse(text: str, where: str) -> DeploymentArtifact:
    try:
        return DeploymentArtifact.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ArtifactMismatchError(f"{where}: unreadable artifact description ({exc})") from exc
    except ArtifactMismatchError as exc:
        raise ArtifactMismatchError(f"{where}: {exc}") from exc


def _differences(a: DeploymentArtifact, b: DeploymentArtifact) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    keys = sorted(set(da) | set(db))
    out = []
    for k in keys:
        va, vb = da.get(k), db.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += [f"{k}.{kk}" for kk in sorted(set(va) | set(vb)) if va.get(kk) != vb.get(kk)]
        elif va != vb:
            out.append(k)
    return out


def read_artifact(model_path: str | Path, metadata: dict[str, str] | None = None) -> DeploymentArtifact:
    """The artifact description of a model: its embedded metadata (e.g. ONNX Runtime's custom metadata map),
    else its sidecar.

    The metadata inside the model wins, and a sidecar beside it must say the same: a sidecar that
    disagrees (another hash, another patch size) or cannot be read is refused, since one of the two is
    stale and the runtime cannot tell which the user meant. Raises :class:`ArtifactMismatchError` for that,
    and when neither holds a description (the file is not a NaViT export).
    """
    side = sidecar_path(model_path)
    embedded = metadata.get(METADATA_KEY) if metadata else None
    if embedded is not None:
        art = _parse(embedded, f"{model_path} (metadata)")
        if side.is_file():
            try:
                beside = _parse(side.read_text(), str(side))
            except ArtifactMismatchError as exc:
                raise ArtifactMismatchError(f"{exc}. The description inside {Path(model_path).name} is the one that "
                                            f"counts: delete or rewrite {side.name} (re-export writes both)") from exc
            diff = _differences(art, beside)
            if diff:
                raise ArtifactMismatchError(
                    f"{side.name} disagrees with the metadata inside {Path(model_path).name} on {', '.join(diff[:6])}: "
                    "one of them is stale. The metadata in the model is the one that counts; delete the sidecar or "
                    "re-export (which writes both)")
        return art
    if side.is_file():
        return _parse(side.read_text(), str(side))
    raise ArtifactMismatchError(f"{model_path} is not a navit-deploy export: no '{METADATA_KEY}' metadata and no "
                                f"{side.name} sidecar. Export it with `navit export`.")
