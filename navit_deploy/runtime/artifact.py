"""The deployment artifact: everything the runtime needs travels with the ONNX file. Torch-free.

Stored twice, identically: as ONNX metadata (key ``navit_deploy``) and as a JSON sidecar
``<model>.onnx.json`` (readable without parsing the model, and by the TensorRT runner for engines).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from navit_deploy.errors import ArtifactMismatchError
from navit_deploy.frontend.config import FrontendConfig

METADATA_KEY = "navit_deploy"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DeploymentArtifact:
    """Front end, packing, labels, lowering and provenance of an exported NaViT."""

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frontend"] = self.frontend.to_dict()
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeploymentArtifact":
        try:
            kw = dict(d)
            if kw.get("format_version") != FORMAT_VERSION:
                raise ArtifactMismatchError(f"artifact format {kw.get('format_version')} is not {FORMAT_VERSION}; "
                                            "re-export the model with this version of navit-deploy")
            kw["frontend"] = FrontendConfig.from_dict(kw["frontend"])
            kw["labels"] = tuple(kw["labels"])
            return cls(**kw)
        except (KeyError, TypeError) as exc:
            raise ArtifactMismatchError(f"not a navit-deploy artifact description ({exc})") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def with_(self, **changes: Any) -> "DeploymentArtifact":
        d = self.to_dict()
        d.update(changes)
        return DeploymentArtifact.from_dict(d)


def sidecar_path(model_path: str | Path) -> Path:
    return Path(str(model_path) + ".json")


def write_sidecar(model_path: str | Path, artifact: DeploymentArtifact) -> Path:
    path = sidecar_path(model_path)
    path.write_text(artifact.to_json() + "\n")
    return path


def read_artifact(model_path: str | Path, metadata: dict[str, str] | None = None) -> DeploymentArtifact:
    """Read the artifact from ``metadata`` (e.g. ONNX Runtime's custom metadata map) or the sidecar.

    Raises :class:`ArtifactMismatchError` when neither holds one: the file is not a NaViT export.
    """
    if metadata and METADATA_KEY in metadata:
        return DeploymentArtifact.from_dict(json.loads(metadata[METADATA_KEY]))
    side = sidecar_path(model_path)
    if side.is_file():
        try:
            return DeploymentArtifact.from_dict(json.loads(side.read_text()))
        except json.JSONDecodeError as exc:
            raise ArtifactMismatchError(f"{side}: unreadable sidecar ({exc})") from exc
    raise ArtifactMismatchError(f"{model_path} is not a navit-deploy export: no '{METADATA_KEY}' metadata and no "
                                f"{side.name} sidecar. Export it with `navit export`.")
