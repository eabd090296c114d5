"""Checkpoints as safetensors plus a JSON config (never pickles), and the builtin model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from navit_deploy.errors import CheckpointError, ConfigError
from navit_deploy.model.config import NaViTConfig
from navit_deploy.model.navit import NaViT

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BUILTIN = "builtin"


def builtin_model_dir() -> Path:
    """Directory of the model this project trained and ships (see README for the command)."""
    return Path(__file__).resolve().parents[1] / "assets" / "builtin"


def resolve_model_dir(model: str | Path) -> Path:
    """``"builtin"`` or a directory holding ``model.safetensors`` and ``config.json``."""
    path = builtin_model_dir() if str(model) == BUILTIN else Path(model)
    if not path.is_dir():
        raise CheckpointError(f"model directory not found: {path} (use --model builtin or a directory "
                              f"with {WEIGHTS_FILE} and {CONFIG_FILE})")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}")
    return path


def save_model(model: NaViT, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "arch": "navit"})
    model.config.save(out / CONFIG_FILE)
    return out


def load_state(model: NaViT, weights: Path) -> None:
    """Load weights into ``model``, refusing missing, unexpected or mis-shaped tensors."""
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} vs config {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{weights} does not match its config: missing={missing[:5]} unexpected={unexpected[:5]} "
            f"shape mismatches={shapes[:5]}"
        )
    model.load_state_dict(state)


def load_model(model: str | Path = BUILTIN, attention: str = "dense") -> NaViT:
    """Build a NaViT from a model directory (or ``"builtin"``) in eval mode."""
    path = resolve_model_dir(model)
    try:
        config = NaViTConfig.load(path / CONFIG_FILE)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    net = NaViT(config)
    load_state(net, path / WEIGHTS_FILE)
    return net.set_attention(attention).eval()


def weights_hash(path: str | Path) -> str:
    """sha256 of a weights file: ties exported artifacts to the exact weights they came from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

