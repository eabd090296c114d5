"""``pipeline_for``: the pipeline an artifact gets, with the caller's channel order passed through."""

import numpy as np

from navit_deploy.runtime.onnx_runner import OnnxRunner
from navit_deploy.runtime.open import pipeline_for


def test_pipeline_for_channel_order_bgr(exported):
    rgb = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    with OnnxRunner(exported("dense")) as runner:
        pipe = pipeline_for(runner, runner.artifact, channel_order="BGR")
        assert pipe.channel_order == "BGR"
        bgr_result = pipe.run([rgb[:, :, ::-1].copy()])[0]
        rgb_result = pipeline_for(runner, runner.artifact).run([rgb])[0]
    # The BGR frame read as BGR is the same image as the RGB frame read as RGB.
    np.testing.assert_allclose(bgr_result.embedding, rgb_result.embedding, atol=1e-5)
