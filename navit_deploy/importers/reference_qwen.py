"""transformers' Qwen2.5-VL / Qwen2-VL vision tower and ``Qwen2VLImageProcessor`` as a parity reference, image by
image in fp32 on CPU (see :mod:`navit_deploy.importers.reference` for the two questions a reference answers).

Its outputs are the merged visual tokens (``pooler_output``, ``[n / 4, out_hidden_size]``, the model's own
order); its pixels are the processor's ``pixel_values`` rows, which are already the project's patch layout
(``(c, t, py, px)``, merge blocks contiguous), with coordinates in merge-block order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from navit_deploy.errors import BackendUnavailableError
from navit_deploy.frontend import ImageSource, PreparedImage, describe_source, grid_coords
from navit_deploy.importers.reference import load_like_transformers, load_processor, quiet_transformers
from navit_deploy.runtime.results import ImageResult


class QwenVLReference:
    """The vision tower of a Qwen2.5-VL / Qwen2-VL directory (whole VLM or tower alone) and its image processor
    (PIL backend, from ``preprocessor_config.json``)."""

    family = "qwen-vl"

    def __init__(self, path: str | Path, attn_implementation: str = "sdpa") -> None:
        try:
            import torch  # noqa: F401
            import transformers as tf
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        except ImportError as exc:
            raise BackendUnavailableError(f"the Qwen-VL reference needs torch and transformers ({exc}); "
                                          "pip install transformers") from exc
        self.path = Path(path)
        model_type = json.loads((self.path / "config.json").read_text()).get("model_type")
        kw = {"attn_implementation": attn_implementation}
        classes = {"qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration, "qwen2_vl": tf.Qwen2VLForConditionalGeneration}
        with quiet_transformers():
            if model_type in classes:
                self.model = classes[model_type].from_pretrained(self.path, **kw).model.visual
            else:
                from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
                from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

                cls = (Qwen2_5_VisionTransformerPretrainedModel if model_type == "qwen2_5_vl_vision"
                       else Qwen2VisionTransformerPretrainedModel)
                self.model = cls.from_pretrained(self.path, **kw)
        tower = type(self.model).__name__
        self.model.eval().float()
        self.processor = load_processor(Qwen2VLImageProcessorPil, self.path)
        self.patch, self.merge = int(self.processor.patch_size), int(self.processor.merge_size)
        self.name = f"transformers {tf.__version__} {tower} ({attn_implementation})"

    def _run(self, sources: Sequence[ImageSource]) -> tuple[list[ImageResult], list[PreparedImage | ImageResult]]:
        import torch

        results: list[ImageResult] = []
        prepared: list[PreparedImage | ImageResult] = []
        p = self.patch
        for i, src in enumerate(sources):
            name = describe_source(src)
            try:
                inputs = self.processor(images=[load_like_transformers(src)], return_tensors="pt")
            except Exception as exc:  # noqa: BLE001 - the reference's own refusal of this input
                results.append(ImageResult(i, name, error=f"{name}: {exc}", error_type=type(exc).__name__))
                prepared.append(results[-1])
                continue
            _, gh, gw = (int(x) for x in inputs["image_grid_thw"][0])
            with torch.no_grad():
                tokens = self.model(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
            results.append(ImageResult(i, name, tokens=gh * gw, grid=(gh, gw), resized_size=(gw * p, gh * p),
                                       output_kind="tokens", visual_tokens=tokens.float().numpy()))
            pix = inputs["pixel_values"].numpy().astype(np.float32)
            prepared.append(PreparedImage(pix, grid_coords(gh, gw, self.merge), (gh, gw), (gw * p, gh * p),
                                          (gw * p, gh * p)))
        return results, prepared

    def embed(self, sources: Sequence[ImageSource]) -> list[ImageResult]:
        """The merged visual tokens per image, from the image through transformers' own preprocessing."""
        return self._run(sources)[0]

    def pixels(self, sources: Sequence[ImageSource]) -> tuple[list[ImageResult], list[PreparedImage | ImageResult]]:
        """The reference's tokens and its pixel values (already the project's layout), image by image."""
        return self._run(sources)


__all__ = ["QwenVLReference"]
