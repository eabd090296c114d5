"""``navit train``, ``navit eval`` and ``navit pack``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from navit_deploy.commands.budget_args import add_pixel_budget_args, budget_frontend
from navit_deploy.errors import ImageError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a NaViT (or the square ViT baseline) on packed batches")
    p.add_argument("--out", required=True, help="output directory (model.safetensors, config.json, checkpoints)")
    p.add_argument("--mode", choices=["navit", "vit"], default="navit",
                   help="navit: native aspect, resolution sampling, token dropping, packing (default); vit: the "
                        "square-resize ViT baseline")
    p.add_argument("--data", default="procedural", help="'procedural' or an image folder root/<class>/<images>")
    p.add_argument("--tokens", type=int, default=2_000_000, help="training compute, in tokens processed")
    p.add_argument("--dim", type=int, default=192, help="model width (default 192)")
    p.add_argument("--depth", type=int, default=6, help="transformer layers (default 6)")
    p.add_argument("--heads", type=int, default=3, help="attention heads (head dim = dim / heads)")
    p.add_argument("--max-patches", type=int, default=256, help="per-image token budget (upper end of resolution sampling)")
    p.add_argument("--min-patches", type=int, default=48, help="lower end of per-image resolution sampling")
    p.add_argument("--square-grid", type=int, default=16, help="vit mode: square side in patches")
    p.add_argument("--drop-max", type=float, default=0.5, help="max token-drop rate (rate ~ drop_max * Beta(1,3))")
    p.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (AdamW, warm-up then cosine)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the data order and the sampling")
    p.add_argument("--no-resume", action="store_true", help="start over even if out/ckpt exists")
    p.add_argument("--workers", type=int, default=1, help="data-loading worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="held-out top-1 of a checkpoint or an ONNX model")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="'builtin' or a model directory")
    src.add_argument("--onnx", default=None, help="an exported ONNX model (runs on ONNX Runtime)")
    p.add_argument("--data", default="procedural", help="'procedural' (held-out split) or an image folder root/<class>/")
    p.add_argument("--size", type=int, default=None, help="number of held-out images (default: the full test split)")
    p.add_argument("--provider", default="cpu", help="ONNX Runtime provider for --onnx: cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the result as JSON (errors too, on stdout)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("pack", help="packing statistics (and a picture) for a set of images",
                       description="Packs the images as the runtime would for --model (navit infer on its export): "
                                   "the model's front end (token budget, patch size) and the runtime's packing "
                                   "policy for its lowering (dense mask: packs of up to max(budget, 256) tokens, cut "
                                   "to their fill; TensorRT: cut to multiples of 64). Each option overrides one part.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", default="builtin",
                   help="'builtin' (default), a model directory, or an exported .onnx / TensorRT engine whose "
                        "front end and packing to use")
    p.add_argument("--pack-len", type=int, default=None,
                   help="fixed packs of N tokens, padded (as navit infer --pack-len); default: the runtime's policy")
    p.add_argument("--max-images", type=int, default=None, help="images per pack (default: the model's, 64)")
    p.add_argument("--max-patches", type=int, default=None, help="per-image token budget (default: the model's)")
    p.add_argument("--patch-size", type=int, default=None, help="patch side in pixels (default: the model's)")
    add_pixel_budget_args(p)
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="decompression-bomb limit in pixels (default: the model's, 89,478,485)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON (errors too, on stdout)")
    p.add_argument("--png", default=None, help="write a picture of the packs (PNG) to this path")
    p.set_defaults(func=cmd_pack)


def load_dataset(data: str, split: str, size: int | None):
    """``procedural`` (train/test split) or an image folder with class subfolders."""
    from navit_deploy.data.procedural import ProceduralDataset
    from navit_deploy.evaluation import DEFAULT_TEST_SIZE

    if data == "procedural":
        return ProceduralDataset(split, size or (DEFAULT_TEST_SIZE if split == "test" else 10_000_000))
    from navit_deploy.data.image_folder import ImageFolderDataset
    from navit_deploy.frontend import load_image

    folder = ImageFolderDataset(data)

    class _Loaded:
        classes = folder.classes

        def __len__(self) -> int:
            return len(folder) if size is None else min(size, len(folder))

        def __getitem__(self, i: int):
            path, label = folder[i]
            return load_image(path), label

    return _Loaded()


def cmd_train(args: argparse.Namespace) -> int:
    from navit_deploy.data.procedural import CLASSES
    from navit_deploy.frontend import FrontendConfig
    from navit_deploy.model.config import NaViTConfig
    from navit_deploy.train.config import TrainConfig
    from navit_deploy.train.loop import train

    data = load_dataset(args.data, "train", None)
    labels = tuple(CLASSES) if args.data == "procedural" else tuple(data.classes)
    fe = FrontendConfig(max_patches=args.max_patches, square_grid=args.square_grid if args.mode == "vit" else 0)
    mc = NaViTConfig(dim=args.dim, depth=args.depth, heads=args.heads, pool_heads=args.heads,
                     num_classes=len(labels), labels=labels, frontend=fe)
    tc = TrainConfig(mode=args.mode, total_tokens=args.tokens, min_patches=min(args.min_patches, args.max_patches),
                     drop_max=args.drop_max if args.mode == "navit" else 0.0, lr=args.lr, seed=args.seed, threads=args.threads,
                     warmup_tokens=max(1, args.tokens // 20))
    res = train(data, mc, tc, args.out, resume=not args.no_resume, workers=args.workers)
    print(f"trained {args.mode}: {res.tokens_seen} tokens, {res.images_seen} images, {res.steps} steps, "
          f"{res.wall_s:.0f} s -> {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from navit_deploy.evaluation import evaluate
    from navit_deploy.runtime import Pipeline

    if args.onnx:
        from navit_deploy.runtime.onnx_runner import OnnxRunner

        runner = OnnxRunner(args.onnx, provider=args.provider)
        frontend = runner.artifact.frontend
        what = args.onnx
    else:
        from navit_deploy.runtime.torch_runner import TorchRunner

        runner = TorchRunner(args.model or "builtin", attention="segment")
        frontend = runner.model.config.frontend
        what = args.model or "builtin"
    _check_labels(runner, args.data)
    data = load_dataset(args.data, "test", args.size)
    with runner:
        report = evaluate(Pipeline(runner, frontend), data, progress=not args.json)
    if args.json:
        print(json.dumps({"model": str(what), **report.to_json()}))
    else:
        print(f"{what}: held-out top-1 {report.top1:.4f} on {report.images} images ({report.failed} failed)")
    return 0


def _check_labels(runner, data: str) -> None:
    """Eval needs a classifier, and the procedural set's labels are the builtin model's 8 classes."""
    from navit_deploy.data.procedural import CLASSES
    from navit_deploy.errors import ConfigError

    from navit_deploy.runtime.artifact import require_pooled

    if hasattr(runner, "artifact"):
        require_pooled(runner.output_kind, runner.artifact.family, "navit eval")
        has_logits, labels = runner.artifact.has_logits, tuple(runner.artifact.labels)
    else:
        require_pooled(runner.output_kind, runner.model.config.family, "navit eval")
        has_logits, labels = bool(runner.model.config.num_classes), runner.model.config.label_names()
    if not has_logits:
        raise ConfigError("this model has no classifier (an embedding model): there is no top-1 to evaluate; "
                          "use navit parity (against its reference) or navit bench")
    if data == "procedural" and labels != tuple(CLASSES):
        raise ConfigError(f"the procedural held-out set is labelled with the builtin model's {len(CLASSES)} classes, "
                          f"this model has {len(labels)} others; pass --data FOLDER (root/<class>/ images, classes in "
                          "the model's order)")


def pack_target(model: str) -> tuple[Any, str, str, int, Any]:
    """What the runtime would use for ``model``: (front end, attention lowering, backend, images per pack,
    window spec: how a VLM tower's packs hold merge blocks and windows, None for a pooled model).

    An exported ``.onnx`` or engine carries its own; a model directory (or ``builtin``) is taken as its dense
    export on ONNX Runtime CPU, what ``navit deploy``'s ``navit.dense.onnx`` runs on.
    """
    from navit_deploy.runtime.open import ENGINE_SUFFIXES

    if Path(model).suffix in (".onnx", *ENGINE_SUFFIXES):
        from navit_deploy.errors import ArtifactMismatchError
        from navit_deploy.runtime.artifact import read_artifact

        if not Path(model).is_file():
            raise ArtifactMismatchError(f"model file not found: {model}")
        art = read_artifact(model)
        backend = "tensorrt" if Path(model).suffix in ENGINE_SUFFIXES else "cpu"
        return art.frontend, art.lowering, backend, art.max_images, art.windows
    try:
        from navit_deploy.model.weights import model_config
    except ImportError:  # a runtime-only install (no torch): project model directories still have a config.json
        from navit_deploy.model.config import NaViTConfig

        cfg_path = (Path(__file__).resolve().parents[1] / "assets" / "builtin" if model == "builtin"
                    else Path(model)) / "config.json"
        cfg = NaViTConfig.load(cfg_path)
    else:
        cfg = model_config(model)
    return cfg.frontend, "dense", "cpu", 64, cfg.windows


def _merged(patch_tokens: int, fe: Any) -> dict[str, int]:
    """``{"merged_tokens": n}`` for a model with a patch merger (Qwen-VL: patch tokens / merge_size**2, the
    visual tokens the language model receives); nothing otherwise."""
    return {"merged_tokens": patch_tokens // fe.tokens_per_merged_token} if fe.merge_size > 1 else {}


def cmd_pack(args: argparse.Namespace) -> int:
    from navit_deploy.errors import ConfigError
    from navit_deploy.frontend import prepare_image
    from navit_deploy.packing import Packer, padding_fraction, recommended_packing
    from navit_deploy.packing.policy import describe_packer

    if args.png and not Path(args.png).resolve().parent.is_dir():
        raise ConfigError(f"--png {args.png}: the folder {Path(args.png).parent} does not exist; create it or write "
                          "the picture elsewhere")
    frontend, lowering, backend, max_images, windows = pack_target(args.model)
    changes = {k: v for k, v in (("patch_size", args.patch_size), ("max_image_pixels", args.max_image_pixels))
               if v is not None}
    fe = budget_frontend(args, frontend) or frontend  # --max-patches, --min/--max-pixels
    fe = fe.replace(**changes) if changes else fe
    max_images = args.max_images or max_images
    packer = (Packer(args.pack_len, max_images, windows=windows) if args.pack_len else
              recommended_packing(fe.max_tokens_per_image, lowering, backend, max_images, windows=windows))
    prepared, errors, names = [], [], []
    for path in args.images:
        try:
            prepared.append(prepare_image(path, fe))
            names.append(path)
        except ImageError as exc:
            errors.append({"path": path, "error": str(exc), "error_type": type(exc).__name__})
    packs = packer.pack(prepared) if prepared else []
    pad = padding_fraction(packs)
    report = {
        "model": args.model,
        "budget": fe.max_tokens_per_image,
        "packing": describe_packer(packer),
        "images": len(prepared),
        "packs": len(packs),
        "pack_len": packer.pack_len,
        "padding_fraction": round(pad, 6),
        "tokens": sum(p.num_tokens for p in prepared),
        **_merged(sum(p.num_tokens for p in prepared), fe),
        "per_image": [{"path": n, "tokens": p.num_tokens, **_merged(p.num_tokens, fe), "grid": list(p.grid),
                       "resized_size": list(p.resized_size)} for n, p in zip(names, prepared)],
        "per_pack": [{"images": [names[i] for i in pk.image_index.tolist()], "tokens": pk.pack_len,
                      "valid_tokens": pk.num_valid} for pk in packs],
        "errors": errors,
    }
    if args.png and packs:
        from navit_deploy.packing.visualize import draw_packs

        try:
            draw_packs(packs, args.png, names=[Path(n).name for n in names],
                       title=f"{len(prepared)} images, {describe_packer(packer)}", capacity=packer.pack_len)
        except (OSError, ValueError) as exc:  # unwritable path, unknown image extension
            raise ConfigError(f"--png {args.png}: cannot write the picture ({exc})") from exc
        report["png"] = args.png
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{len(prepared)} images -> {len(packs)} packs ({describe_packer(packer)}; budget "
              f"{fe.max_tokens_per_image} tokens per image), padding {pad:.2%}")
        if "merged_tokens" in report:
            per = [e["merged_tokens"] for e in report["per_image"]]
            print(f"  {report['tokens']} patch tokens -> {report['merged_tokens']} visual tokens after the "
                  f"{fe.merge_size}x{fe.merge_size} merger (per image: mean {sum(per) / len(per):.0f}, "
                  f"{min(per)}-{max(per)})")
        for e in errors:
            print(f"  error: {e['path']}: {e['error']}", file=sys.stderr)
    return 1 if errors else 0
