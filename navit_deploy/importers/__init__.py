"""Importers of foreign checkpoints: one module per source family, each a pair of pure functions
``detect(dir) -> bool`` (from the files, never the name) and ``convert(dir) -> ImportedModel`` (model config
with its front end, state dict), plus ``describe(dir)`` for the config alone.

Families: Hugging Face SigLIP 2 (:mod:`.hf_siglip2`), vit-pytorch's NaViT (:mod:`.vit_pytorch`) and the
Qwen2.5-VL / Qwen2-VL vision towers (:mod:`.hf_qwen_vl`).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from navit_deploy.importers.base import ImportedModel

FAMILIES = ("siglip2", "vit-pytorch", "qwen-vl")


def _module(family: str) -> ModuleType:
    if family == "siglip2":
        from navit_deploy.importers import hf_siglip2

        return hf_siglip2
    if family == "vit-pytorch":
        from navit_deploy.importers import vit_pytorch

        return vit_pytorch
    if family == "qwen-vl":
        from navit_deploy.importers import hf_qwen_vl

        return hf_qwen_vl
    raise KeyError(family)


def detect_family(src: str | Path) -> str | None:
    """The family of a checkpoint directory, or None when no importer recognizes it."""
    for family in FAMILIES:
        if _module(family).detect(src):
            return family
    return None


def import_checkpoint(src: str | Path, family: str | None = None) -> ImportedModel:
    """Convert a foreign checkpoint directory (family detected from its files unless given)."""
    from navit_deploy.errors import CheckpointError

    family = family or detect_family(src)
    if family is None:
        raise CheckpointError(f"{src}: not a checkpoint any importer recognizes ({', '.join(FAMILIES)})")
    return _module(family).convert(src)


def describe_checkpoint(src: str | Path, family: str):
    """The model config (front end included) of a foreign checkpoint, without reading its weights."""
    return _module(family).describe(src)


__all__ = ["FAMILIES", "ImportedModel", "describe_checkpoint", "detect_family", "import_checkpoint"]
