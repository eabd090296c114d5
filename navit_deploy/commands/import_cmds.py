"""``navit import``: a foreign checkpoint (SigLIP 2, vit-pytorch NaViT) as a project model directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert a SigLIP 2, Qwen2(.5)-VL vision tower or vit-pytorch NaViT checkpoint into a project model directory",
                       description="Reads a Hugging Face SigLIP 2 or Qwen2.5-VL / Qwen2-VL directory (config.json, "
                                   "model.safetensors or shards, preprocessor_config.json; of a VLM only the vision "
                                   "tower is read) or a vit-pytorch NaViT directory (model.safetensors + "
                                   "constructor arguments in config.json), detected from the files, and writes "
                                   "model.safetensors + config.json (+ imported_from.json). Every command also takes "
                                   "the source directory directly; this is for those who want to keep a converted copy.")
    p.add_argument("src", help="the checkpoint directory")
    p.add_argument("--out", required=True, help="output directory for the project model")
    p.add_argument("--json", action="store_true", help="print what was imported as JSON")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from navit_deploy.errors import ConfigError
    from navit_deploy.importers import import_checkpoint
    from navit_deploy.model.navit import NaViT
    from navit_deploy.model.weights import load_state, save_model

    out = Path(args.out)
    if out.resolve() == Path(args.src).resolve():
        raise ConfigError("--out must differ from the source directory")
    imported = import_checkpoint(args.src)
    net = NaViT(imported.config)
    load_state(net, imported.state)
    provenance = {"family": imported.family, "source": str(Path(args.src).resolve()),
                  "source_weights_sha256": imported.digest, "notes": imported.notes}
    save_model(net.eval(), out, provenance)
    c = imported.config
    info = {**provenance, "out": str(out), "dim": c.dim, "depth": c.depth, "heads": c.heads, "head_dim": c.head_dim,
            "outputs": list(c.outputs), "frontend": {"budget": c.frontend.budget, "max_patches": c.frontend.max_patches,
                                                     "patch_size": c.frontend.patch_size}}
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"imported {imported.family} ({c.dim} wide, {c.depth} layers, {c.heads} heads of {c.head_dim}; "
              f"outputs {', '.join(c.outputs)}) -> {out}")
        for note in imported.notes:
            print(f"  note: {note}")
    return 0
