"""Resumable training state in safetensors + JSON (model, optimizer moments, data position)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from navit_deploy.errors import CheckpointError

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{key}"] = val.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = val
    for name, val in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_train_state(out_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, progress: dict[str, Any]) -> None:
    """Write the model weights, optimizer moments and ``progress`` (tokens seen, data position) atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, meta = optimizer_to_flat(opt)
    tensors.update({f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    tmp = out_dir / (STATE_TENSORS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out_dir / STATE_TENSORS)
    (out_dir / (STATE_JSON + ".tmp")).write_text(json.dumps({"optimizer": meta, "progress": progress}, indent=1))
    (out_dir / (STATE_JSON + ".tmp")).replace(out_dir / STATE_JSON)


def load_train_state(out_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore what :func:`save_train_state` wrote; ``None`` when there is nothing to resume."""
    if not (out_dir / STATE_JSON).is_file():
        return None
    try:
        blob = json.loads((out_dir / STATE_JSON).read_text())
        tensors = load_file(str(out_dir / STATE_TENSORS))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{out_dir}: cannot resume, training state is unreadable ({exc})") from exc
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state)
    except RuntimeError as exc:
        raise CheckpointError(f"{out_dir}: training state does not match the model config ({exc})") from exc
    optimizer_from_flat(opt, tensors, blob["optimizer"])
    return blob["progress"]
