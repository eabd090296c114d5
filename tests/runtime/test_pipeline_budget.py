"""Per-call budget overrides: ``Pipeline.with_budget`` and ``FrontendConfig.with_budget`` (max_patches for NaFlex-style
budgets, min_pixels/max_pixels for pixel budgets such as Qwen-VL's), without a model (a stub runner)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from navit_deploy.errors import ConfigError
from navit_deploy.frontend import FrontendConfig
from navit_deploy.packing import Packer
from navit_deploy.runtime import Pipeline
from navit_deploy.runtime.runner import RunnerOutput

QWEN = FrontendConfig(patch_size=14, budget="pixels", merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                      max_pixels=28 * 28 * 64, max_grid=1 << 14, resample="bicubic", reducing_gap=None,
                      jpeg_draft=False, to_rgb="convert")


class CountingRunner:
    """Returns, per image of a pack, its token count as a 1-d embedding; remembers the pack lengths."""

    name = "stub"
    concurrency = 1

    def __init__(self) -> None:
        self.pack_lens: list[int] = []

    def infer(self, pack) -> RunnerOutput:
        self.pack_lens.append(int(pack.pack_len))
        return RunnerOutput(pack.seqlens.astype(np.float32)[:, None])


def _image(w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_pixel_budget_override_per_call():
    runner = CountingRunner()
    pipe = Pipeline(runner, QWEN, Packer(256, 8), workers=0)
    big = _image(1600, 1200)
    (base,) = pipe.run([big])
    assert base.ok and base.tokens <= QWEN.max_pixels // 14 ** 2
    wider = pipe.with_budget(max_pixels=28 * 28 * 256)
    (more,) = wider.run([big])
    assert more.ok and more.tokens > 2 * base.tokens and more.tokens <= 28 * 28 * 256 // 14 ** 2
    # The pack was lengthened to hold a full-budget image; the original pipeline is unchanged.
    assert wider.packer.pack_len >= wider.frontend.max_tokens_per_image > pipe.packer.pack_len == 256
    assert pipe.frontend is QWEN and pipe.run([big])[0].tokens == base.tokens
    (fewer,) = pipe.with_budget(min_pixels=28 * 28, max_pixels=28 * 28 * 4).run([big])
    assert fewer.tokens <= 16
    (small,) = pipe.with_budget(min_pixels=28 * 28 * 16).run([_image(30, 30)])
    assert small.tokens >= 64


def test_override_of_a_budget_the_model_does_not_use_is_refused():
    with pytest.raises(ConfigError, match="max_pixels"):
        QWEN.with_budget(max_patches=256)
    with pytest.raises(ConfigError, match="max_patches"):
        FrontendConfig(max_patches=64).with_budget(max_pixels=1 << 20)
    with pytest.raises(ConfigError, match="min_pixels <= max_pixels"):
        QWEN.with_budget(max_pixels=1000)  # below the model's min_pixels
    assert QWEN.with_budget() is QWEN
    assert FrontendConfig(max_patches=64).with_budget(max_patches=16, upscale=False) == \
        FrontendConfig(max_patches=16, upscale=False)


def test_cli_budget_flags(tmp_path):
    import argparse

    from navit_deploy.commands.budget_args import budget_frontend
    from navit_deploy.cli import build_parser

    args = build_parser().parse_args(["serve", "--onnx", "m.onnx", "--max-pixels", "1048576"])
    assert budget_frontend(args, QWEN).max_pixels == 1 << 20
    args = build_parser().parse_args(["embed", "x", "--onnx", "m.onnx", "--out", str(tmp_path), "--min-pixels", "3136"])
    assert budget_frontend(args, QWEN) == QWEN.replace(min_pixels=3136)
    assert budget_frontend(argparse.Namespace(max_pixels=None), QWEN) is None
