"""The source libraries as parity references: transformers' SigLIP 2 (its image processor and vision model) and
vit-pytorch's NaViT, run image by image in fp32 on CPU. Needs torch and the source library; nothing is
downloaded (a source that is not a local file is that image's error, never a URL fetch).

Each reference answers two questions, image by image:

* :meth:`embed`: end to end, from the image as the user has it, through the source's own preprocessing
  (SigLIP 2: ``transformers.image_utils.load_image`` then ``Siglip2ImageProcessor``);
* :meth:`pixels`: the source's own pixel values, converted to the project's patch layout, with the
  reference's outputs for exactly those pixels (feed them to a runner to compare the model alone).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from navit_deploy.errors import BackendUnavailableError, CheckpointError
from navit_deploy.importers.base import PREPROCESSOR
from navit_deploy.frontend import ImageSource, PreparedImage, describe_source, grid_coords
from navit_deploy.runtime.results import ImageResult


def _result(index: int, name: str, emb: Any, logits: Any, grid: tuple[int, int], patch: int) -> ImageResult:
    h, w = grid
    return ImageResult(index, name, embedding=emb.float().numpy(), logits=None if logits is None else logits.float().numpy(),
                       tokens=h * w, grid=(h, w), resized_size=(w * patch, h * patch))


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Around a reference's ``from_pretrained``: no ``Loading weights`` progress bar and no config warnings from
    transformers (they would interleave with our own progress); its previous settings are restored."""
    from transformers.utils import logging as tf_logging

    bars, level = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(level)
        if bars:
            tf_logging.enable_progress_bar()


def load_processor(cls: Any, path: Path) -> Any:
    """The image processor ``cls`` from the checkpoint's ``preprocessor_config.json``, or with the class's own
    defaults when the directory has none (as the importers assume)."""
    return cls.from_pretrained(path) if (path / PREPROCESSOR).is_file() else cls()


def load_like_transformers(src: ImageSource) -> Any:
    """The image as ``transformers.image_utils.load_image`` gives it (EXIF transpose, ``convert("RGB")``)."""
    from PIL import Image
    from transformers.image_utils import load_image

    if isinstance(src, (str, os.PathLike)):
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{src}: no such file")
        return load_image(str(src))
    if isinstance(src, (bytes, bytearray, memoryview)):
        return load_image(Image.open(io.BytesIO(bytes(src))))
    if isinstance(src, Image.Image):
        return load_image(src)
    if isinstance(src, np.ndarray):
        return load_image(Image.fromarray(src))
    raise TypeError(f"unsupported input {type(src).__name__}")


class Siglip2Reference:
    """transformers' ``Siglip2VisionModel`` (from the checkpoint directory) and ``Siglip2ImageProcessorPil``
    (from its ``preprocessor_config.json``)."""

    family = "siglip2"

    def __init__(self, path: str | Path, attn_implementation: str = "eager") -> None:
        try:
            import torch  # noqa: F401
            from transformers import Siglip2Model, Siglip2VisionModel
            from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil
        except ImportError as exc:
            raise BackendUnavailableError(f"the SigLIP 2 reference needs torch and transformers ({exc}); "
                                          "pip install transformers") from exc
        self.path = Path(path)
        model_type = json.loads((self.path / "config.json").read_text()).get("model_type")
        kw = {"attn_implementation": attn_implementation}
        with quiet_transformers():
            if model_type == "siglip2":
                self.model = Siglip2Model.from_pretrained(self.path, **kw).vision_model
            else:
                self.model = Siglip2VisionModel.from_pretrained(self.path, **kw)
        self.model.eval().float()
        self.processor = load_processor(Siglip2ImageProcessorPil, self.path)
        self.patch = int(self.processor.patch_size)
        self.name = f"transformers {self._version()} Siglip2VisionModel ({attn_implementation})"

    @staticmethod
    def _version() -> str:
        import transformers

        return transformers.__version__

    def _load(self, src: ImageSource) -> Any:
        return load_like_transformers(src)

    def _process(self, src: ImageSource) -> tuple[dict[str, Any], tuple[int, int]]:
        inputs = self.processor(images=[self._load(src)], return_tensors="pt")
        h, w = (int(x) for x in inputs["spatial_shapes"][0])
        return inputs, (h, w)

    def _run(self, sources: Sequence[ImageSource], with_pixels: bool):
        import torch

        from navit_deploy.importers.base import patches_ppc_to_cpp

        results, prepared = [], []
        for i, src in enumerate(sources):
            name = describe_source(src)
            try:
                inputs, (h, w) = self._process(src)
            except Exception as exc:  # noqa: BLE001 - the reference's own refusal of this input
                results.append(ImageResult(i, name, error=f"{name}: {exc}", error_type=type(exc).__name__))
                prepared.append(results[-1])
                continue
            with torch.no_grad():
                pooled = self.model(**inputs).pooler_output[0]
            results.append(_result(i, name, pooled, None, (h, w), self.patch))
            if with_pixels:
                n = h * w
                pix = inputs["pixel_values"][0, :n].numpy().astype(np.float32)
                prepared.append(PreparedImage(patches_ppc_to_cpp(pix, self.patch), grid_coords(h, w), (h, w),
                                              (w * self.patch, h * self.patch), (w * self.patch, h * self.patch)))
        return results, prepared

    def embed(self, sources: Sequence[ImageSource]) -> list[ImageResult]:
        """``pooler_output`` per image, from the image through the source's own preprocessing."""
        return self._run(sources, False)[0]

    def pixels(self, sources: Sequence[ImageSource]) -> tuple[list[ImageResult], list[PreparedImage | ImageResult]]:
        """The reference's outputs and its pixel values (project layout), image by image."""
        return self._run(sources, True)


def load_na_vit():
    """``vit_pytorch.na_vit`` without the package ``__init__``, which imports torchvision (its wheels do not load
    beside the CPU build of torch); na_vit itself needs only torch and einops."""
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("the vit-pytorch reference needs vit-pytorch (pip install vit-pytorch einops)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "na_vit.py")
    mod_spec = importlib.util.spec_from_file_location("vit_pytorch_na_vit", path)
    if mod_spec is None or mod_spec.loader is None:
        raise BackendUnavailableError(f"cannot load {path}")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(f"vit_pytorch/na_vit.py cannot be imported here ({exc})") from exc
    return module


class VitPytorchReference:
    """vit-pytorch's ``NaViT`` built from the constructor arguments and state dict in the directory. It has no
    processor of its own: the project's front end makes its pixels (so :meth:`embed` and :meth:`pixels` agree)."""

    family = "vit-pytorch"

    def __init__(self, path: str | Path) -> None:
        import torch
        from safetensors.torch import load_file

        from navit_deploy.importers.vit_pytorch import describe

        self.path = Path(path)
        na = load_na_vit()
        args = {k: v for k, v in json.loads((self.path / "config.json").read_text()).items() if k != "preprocess"}
        if isinstance(args.get("image_size"), list):
            args["image_size"] = tuple(args["image_size"])
        self.model = na.NaViT(**args).eval()
        missing, unexpected = self.model.load_state_dict(load_file(str(self.path / "model.safetensors")), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{self.path}: vit-pytorch NaViT does not take this state dict "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.frontend = describe(self.path).frontend
        self._latent: dict[str, Any] = {}
        self.model.to_latent.register_forward_hook(lambda _m, _i, out: self._latent.__setitem__("x", out))
        self.name = "vit-pytorch NaViT (na_vit.py)"
        self._torch = torch

    def _run(self, sources: Sequence[ImageSource]):
        from navit_deploy.errors import ImageError
        from navit_deploy.frontend import prepare_image

        torch, p, c = self._torch, self.frontend.patch_size, self.frontend.channels
        results, prepared = [], []
        for i, src in enumerate(sources):
            name = describe_source(src)
            try:
                im = prepare_image(src, self.frontend)
            except ImageError as exc:
                results.append(ImageResult(i, name, error=str(exc), error_type=type(exc).__name__))
                prepared.append(results[-1])
                continue
            gh, gw = im.grid
            chw = torch.from_numpy(im.patches).reshape(gh, gw, c, p, p).permute(2, 0, 3, 1, 4).reshape(c, gh * p, gw * p)
            with torch.no_grad():
                logits = self.model([[chw]])[0]
            results.append(_result(i, name, self._latent["x"][0], logits, im.grid, p))
            prepared.append(im)
        return results, prepared

    def embed(self, sources: Sequence[ImageSource]) -> list[ImageResult]:
        """The pooled latent (``to_latent``) and logits per image."""
        return self._run(sources)[0]

    def pixels(self, sources: Sequence[ImageSource]) -> tuple[list[ImageResult], list[PreparedImage | ImageResult]]:
        return self._run(sources)


def source_reference(model: str | Path, family: str, **kw: Any) -> Any:
    """The source library's own implementation of an imported model; :class:`BackendUnavailableError` with the
    reason when the library is not installed."""
    if family == "siglip2":
        return Siglip2Reference(model, **kw)
    if family == "vit-pytorch":
        return VitPytorchReference(model)
    if family == "qwen-vl":
        from navit_deploy.importers.reference_qwen import QwenVLReference

        return QwenVLReference(model, **kw)
    raise BackendUnavailableError(f"no source reference for the {family!r} family")
