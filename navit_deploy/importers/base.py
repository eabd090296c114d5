"""What every importer returns, and the file handling they share: JSON configs, single or sharded
safetensors read key by key (a full SigLIP 2 file also holds the text tower, which is never loaded), and
the digest that ties an export to the exact source files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from navit_deploy.errors import CheckpointError, ConfigError
from navit_deploy.model.config import NaViTConfig
from navit_deploy.runtime.artifact import sha256_file

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PREPROCESSOR = "preprocessor_config.json"
# PIL resampling codes as stored in preprocessor_config.json
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


@dataclass
class ImportedModel:
    """A foreign checkpoint in the project's terms: the model config (front end included), the state dict
    for :class:`~navit_deploy.model.navit.NaViT`, and where it came from."""

    config: NaViTConfig
    state: dict[str, Any]  # torch tensors, keyed as NaViT's state dict
    family: str  # "siglip2", "vit-pytorch", "qwen-vl"
    source: Path
    digest: str  # sha256 of the source weights (see weights_digest)
    notes: list[str] = field(default_factory=list)  # what the conversion did that a user should know


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def weight_files(src: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: ``model.safetensors``, or the shards its
    ``model.safetensors.index.json`` names (in the index's order). Pickled weights are refused."""
    index = src / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map'")
        files = list(dict.fromkeys(str(v) for v in weight_map.values()))
        missing = [f for f in files if not (src / f).is_file()]
        if missing:
            raise CheckpointError(f"{src}: shards named by {index.name} are missing: {missing[:4]}")
        return [src / f for f in files]
    if (src / SAFETENSORS).is_file():
        return [src / SAFETENSORS]
    pickles = [p.name for p in src.glob("*.bin")] + [p.name for p in src.glob("*.pt*")]
    hint = (f" ({', '.join(pickles[:3])} are pickles, which this project never loads: convert them with "
            "safetensors.torch.save_file)") if pickles else ""
    raise CheckpointError(f"{src}: no {SAFETENSORS} or {SAFETENSORS_INDEX}{hint}")


def safetensors_keys(src: Path) -> list[str]:
    """Every tensor name of a checkpoint, from the headers only."""
    from safetensors import safe_open

    keys: list[str] = []
    for f in weight_files(src):
        try:
            with safe_open(str(f), framework="pt") as st:
                keys += list(st.keys())
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own and OSError
            raise CheckpointError(f"{f}: unreadable safetensors file ({exc})") from exc
    return keys


def load_tensors(src: Path, wanted: Callable[[str], bool]) -> dict[str, Any]:
    """The tensors whose name ``wanted`` accepts, read from the (possibly sharded) files: others are never
    read from disk."""
    from safetensors import safe_open

    out: dict[str, Any] = {}
    for f in weight_files(src):
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    if wanted(k):
                        out[k] = st.get_tensor(k)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{f}: unreadable safetensors file ({exc})") from exc
    return out


def weights_digest(files: Iterable[Path]) -> str:
    """sha256 of a single weights file; for shards, sha256 of their sha256s in order (stable, and each shard is
    hashed once)."""
    files = list(files)
    if len(files) == 1:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(bytes.fromhex(sha256_file(f)))
    return h.hexdigest()


def require(state: dict[str, Any], keys: Iterable[str], src: Path) -> None:
    """Refuse a checkpoint that lacks tensors the conversion needs, naming them."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{src}: the checkpoint lacks {len(missing)} tensor(s) this model needs, e.g. "
                              f"{missing[:4]}; is it complete (all shards) and of the architecture its config says?")


def patches_ppc_to_cpp(x: Any, patch: int, channels: int = 3) -> Any:
    """Patch vectors flattened ``(py, px, c)`` (SigLIP 2's processor) -> the project's ``(c, py, px)``."""
    import numpy as np

    n = x.shape[0]
    return np.ascontiguousarray(x.reshape(n, patch, patch, channels).transpose(0, 3, 1, 2).reshape(n, -1))


def processor_pixels(pre: dict[str, Any], *, resample: int, mean: list[float], std: list[float],
                     resize_why: str) -> dict[str, Any]:
    """The pixel settings of a transformers image processor's ``preprocessor_config.json`` as
    :class:`~navit_deploy.frontend.config.FrontendConfig` keywords: PIL ``resample`` (the processor's default
    code when the file has none), ``rescale`` and ``mean``/``std`` (``do_rescale``/``do_normalize`` honoured,
    the processor's defaults otherwise), and the reference's decoding (exact filter, no JPEG draft, EXIF
    transpose then ``convert("RGB")``). A file with ``do_resize=false`` is refused (``resize_why``)."""
    if pre.get("do_resize", True) is False:
        raise ConfigError(f"{PREPROCESSOR} has do_resize=false: {resize_why}")
    code = pre.get("resample", resample)
    if code not in _RESAMPLE:
        raise ConfigError(f"{PREPROCESSOR}: resample={code} is not supported (2 bilinear, 3 bicubic)")
    rescale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    if not pre.get("do_normalize", True):
        mean, std = [0.0] * 3, [1.0] * 3
    return {"mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std), "rescale": rescale,
            "resample": _RESAMPLE[code], "reducing_gap": None, "jpeg_draft": False, "to_rgb": "convert"}
