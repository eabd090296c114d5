"""Checkpoints as safetensors plus a JSON config (never pickles): the builtin model, project model
directories, and foreign checkpoints through the importers (SigLIP 2, vit-pytorch NaViT)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from navit_deploy.errors import CheckpointError, ConfigError
from navit_deploy.model.config import NaViTConfig
from navit_deploy.model.navit import NaViT
from navit_deploy.runtime.artifact import sha256_file

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PROVENANCE_FILE = "imported_from.json"
BUILTIN = "builtin"
PROJECT = "navit"  # the family of project model directories


def builtin_model_dir() -> Path:
    """Directory of the model this project trained and ships (see README for the command)."""
    return Path(__file__).resolve().parents[1] / "assets" / "builtin"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a project directory (``family="navit"``) or a foreign checkpoint."""

    path: Path
    family: str

    @property
    def is_project(self) -> bool:
        return self.family == PROJECT


def model_source(model: str | Path) -> ModelSource:
    """``"builtin"``, a checkpoint an importer recognizes from its files, or a project model directory (any other
    directory with ``model.safetensors`` and ``config.json``; its config is checked when it is read)."""
    path = builtin_model_dir() if str(model) == BUILTIN else Path(model)
    if not path.is_dir():
        raise CheckpointError(f"model directory not found: {path} (use --model builtin, a project model directory "
                              f"with {WEIGHTS_FILE} and {CONFIG_FILE}, or a SigLIP 2 / Qwen-VL / vit-pytorch NaViT checkpoint)")
    from navit_deploy.importers import FAMILIES, detect_family

    family = detect_family(path) if str(model) != BUILTIN else None
    if family is not None:
        return ModelSource(path, family)
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE) if not (path / n).is_file()]
    if missing:
        have = sorted(p.name for p in path.iterdir())[:8]
        raise CheckpointError(f"{path}: missing {', '.join(missing)}; it is not a model this project can read (it has "
                              f"{have}). Expected a project model directory ({WEIGHTS_FILE} + {CONFIG_FILE}) or a "
                              f"checkpoint of {', '.join(FAMILIES)}")
    return ModelSource(path, PROJECT)


def resolve_model_dir(model: str | Path) -> Path:
    """The directory of ``model`` (``"builtin"``, a project model directory or a foreign checkpoint)."""
    return model_source(model).path


def save_model(model: NaViT, out_dir: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (and ``imported_from.json``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "arch": "navit"})
    model.config.save(out / CONFIG_FILE)
    if provenance:
        (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n")
    return out


def load_state(model: NaViT, state: dict[str, Any] | Path) -> None:
    """Load weights (a state dict or a safetensors file) into ``model``, refusing missing, unexpected or
    mis-shaped tensors."""
    where = str(state) if isinstance(state, Path) else "the converted checkpoint"
    if isinstance(state, Path):
        try:
            state = load_file(str(state))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{where}: unreadable safetensors file ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} vs config {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{where} does not match its config: missing={missing[:5]} unexpected={unexpected[:5]} "
            f"shape mismatches={shapes[:5]}"
        )
    model.load_state_dict(state)


def model_config(model: str | Path = BUILTIN) -> NaViTConfig:
    """The config (front end included) of any model source, without reading its weights."""
    src = model_source(model)
    if src.is_project:
        try:
            return NaViTConfig.load(src.path / CONFIG_FILE)
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from exc
    from navit_deploy.importers import describe_checkpoint

    return describe_checkpoint(src.path, src.family)


def load_model(model: str | Path = BUILTIN, attention: str = "dense") -> NaViT:
    """Build a NaViT from any model source (``"builtin"``, a project directory, a foreign checkpoint), eval mode."""
    src = model_source(model)
    if src.is_project:
        net = NaViT(model_config(src.path))
        load_state(net, src.path / WEIGHTS_FILE)
    else:
        from navit_deploy.importers import import_checkpoint

        imported = import_checkpoint(src.path, src.family)
        net = NaViT(imported.config)
        load_state(net, imported.state)
    return net.set_attention(attention).eval()


def model_digest(model: str | Path = BUILTIN) -> str:
    """sha256 of a model's weights file(s): ties exported artifacts to the exact weights they came from."""
    src = model_source(model)
    if src.is_project:
        return sha256_file(src.path / WEIGHTS_FILE)
    from navit_deploy.importers.base import weight_files, weights_digest

    return weights_digest(weight_files(src.path))


def weights_hash(path: str | Path) -> str:
    """sha256 of one weights file."""
    return sha256_file(path)
