import io
import json

import numpy as np
import pytest
from PIL import Image

from navit_deploy.errors import ArtifactMismatchError, InputValidationError
from navit_deploy.packing import Packer, build_pack
from navit_deploy.runtime import PackLimits, Pipeline, validate_inputs
from navit_deploy.runtime.onnx_runner import OnnxRunner
from tests.conftest import fake_image


def _images(n: int = 10, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = int(rng.integers(20, 700)), int(rng.integers(20, 700))
        out.append(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
    return out


@pytest.fixture
def runner(exported):
    with OnnxRunner(exported("dense")) as r:
        yield r


def test_results_in_input_order_independent_of_packing(runner):
    imgs = _images(12)
    fe = runner.artifact.frontend
    base = Pipeline(runner, fe, Packer(512, 64)).run(imgs)
    small = Pipeline(runner, fe, Packer(64, 3)).run(imgs)
    order = np.random.default_rng(1).permutation(len(imgs))
    shuffled = Pipeline(runner, fe, Packer(512, 64)).run([imgs[i] for i in order])
    assert [r.index for r in base] == list(range(12))
    for i, r in enumerate(base):
        np.testing.assert_allclose(r.embedding, small[i].embedding, atol=1e-5)
        j = int(np.where(order == i)[0][0])
        np.testing.assert_allclose(r.embedding, shuffled[j].embedding, atol=1e-5)


def test_bad_images_do_not_take_down_the_batch(runner, tmp_path):
    good = _images(3)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[:40])
    sources = [good[0], str(tmp_path / "empty.png"), good[1], str(tmp_path / "junk.jpg"),
               str(tmp_path / "trunc.png"), str(tmp_path / "missing.png"), good[2],
               np.zeros((10, 10000, 3), np.uint8)]  # 1000:1 cannot fit the budget
    results = Pipeline(runner, runner.artifact.frontend).run(sources)
    assert [r.index for r in results] == list(range(len(sources)))
    assert [r.ok for r in results] == [True, False, True, False, False, False, True, False]
    assert {results[i].error_type for i in (1, 3, 4, 5)} == {"ImageDecodeError"}
    assert results[7].error_type == "BudgetError"
    alone = Pipeline(runner, runner.artifact.frontend).run(good)
    for r, a in zip([results[0], results[2], results[6]], alone):
        np.testing.assert_allclose(r.embedding, a.embedding, atol=1e-5)


def test_stream_yields_in_order_with_bounded_buffer(runner):
    imgs = _images(15, seed=4)
    pipe = Pipeline(runner, runner.artifact.frontend, Packer(256, 8))
    batch = pipe.run(imgs)
    streamed = list(pipe.stream(iter(imgs), buffer=4, min_fill=0.5))
    assert [r.index for r in streamed] == list(range(15))
    for a, b in zip(batch, streamed):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)


def test_bgr_frames_match_rgb(runner):
    frame = np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    fe = runner.artifact.frontend
    rgb = Pipeline(runner, fe).run([frame])[0]
    bgr = Pipeline(runner, fe, channel_order="BGR").run([np.ascontiguousarray(frame[:, :, ::-1])])[0]
    np.testing.assert_allclose(rgb.embedding, bgr.embedding, atol=1e-6)


def _feed(rng, patch_dim=768):
    return build_pack([fake_image(rng, 3, 3, patch_dim), fake_image(rng, 2, 2, patch_dim)], [0, 1], 20).model_inputs()


@pytest.mark.parametrize("corrupt,match", [
    (lambda f: f.update(patches=f["patches"].astype(np.float64)), "must be float32"),
    (lambda f: f["patches"].__setitem__((0, 0), np.nan), "non-finite"),
    (lambda f: f.update(coords=f["coords"][:-1]), "'coords' must be"),
    (lambda f: f.update(cu_seqlens=np.array([0, 9, 5], np.int32)), "strictly increase"),
    (lambda f: f.update(cu_seqlens=np.array([0, 9, 99], np.int32)), "end <="),
    (lambda f: f.pop("segment_ids"), "missing"),
    (lambda f: f.update(patches=f["patches"][:, :10]), r"\[T, 768\]"),
])
def test_runner_input_validation(runner, corrupt, match):
    feed = dict(_feed(np.random.default_rng(0)))
    corrupt(feed)
    with pytest.raises(InputValidationError, match=match):
        runner.infer(feed)


def test_pack_limits_and_positional_table(runner):
    rng = np.random.default_rng(0)
    feed = _feed(rng)
    with pytest.raises(InputValidationError, match="more than this backend's limit"):
        validate_inputs(feed, 768, PackLimits(max_pack_len=64, max_images=1))
    with pytest.raises(InputValidationError, match="outside this backend's range"):
        validate_inputs(feed, 768, PackLimits(max_pack_len=8, max_images=8))
    feed = dict(feed)
    feed["coords"] = feed["coords"] + 40  # table is 32x32
    with pytest.raises(InputValidationError, match="positional table"):
        runner.infer(feed)


def test_not_a_navit_export(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), tmp_path / "relu.onnx")
    with pytest.raises(ArtifactMismatchError, match="not a navit-deploy export"):
        OnnxRunner(tmp_path / "relu.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactMismatchError):
        OnnxRunner(tmp_path / "garbage.onnx")


def test_result_json_has_what_users_read(runner):
    r = Pipeline(runner, runner.artifact.frontend).run(_images(1))[0]
    d = r.to_json(runner.artifact.labels, k=2)
    assert set(d) >= {"path", "top_k", "embedding_norm", "tokens", "resized_size"}
    assert len(d["top_k"]) == 2 and d["top_k"][0]["score"] >= d["top_k"][1]["score"]
    json.dumps(d)


@pytest.mark.parametrize("n,workers,window", [(1, 2, None), (7, 1, None), (64, 2, None), (64, 4, 8), (100, 2, 3),
                                              (5, 0, 2)])
def test_windows_ramp_up_and_cover_every_image_once(runner, n, workers, window):
    pipe = Pipeline(runner, runner.artifact.frontend, workers=workers, window=window)
    bounds = pipe.window_bounds(n)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a == prev_b for (a, _), (_, prev_b) in zip(bounds[1:], bounds[:-1]))
    sizes = [b - a for a, b in bounds]
    full = window if window is not None else max(8, min(64, -(-n // 4)))
    assert max(sizes) <= full
    assert sizes[0] <= max(1, workers)  # the model starts after the first few images, not a whole window
    assert all(s2 >= s1 for s1, s2 in zip(sizes[:-2], sizes[1:-1]))  # non-decreasing but for the remainder


@pytest.mark.parametrize("workers,window,prefetch", [(0, None, 2), (1, 1, 0), (2, 3, 1), (3, None, 4)])
def test_overlapped_run_matches_one_image_at_a_time(runner, tmp_path, workers, window, prefetch):
    imgs = _images(11, seed=3)
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    sources = imgs[:4] + [str(tmp_path / "junk.jpg")] + imgs[4:]
    fe = runner.artifact.frontend
    pipe = Pipeline(runner, fe, Packer(512, 64), workers=workers, window=window, prefetch=prefetch)
    results = pipe.run(sources)
    assert [r.index for r in results] == list(range(len(sources)))
    assert not results[4].ok and results[4].error_type == "ImageDecodeError"
    reference = [Pipeline(runner, fe, Packer(512, 1), workers=0).run([img])[0] for img in imgs]
    for r, ref in zip(results[:4] + results[5:], reference):
        assert r.ok
        np.testing.assert_allclose(r.embedding, ref.embedding, atol=1e-5)
    st = pipe.stats
    assert st.failed == 1 and st.images == len(sources)
    assert len(st.pack_ms) == st.packs == len(st.pack_shapes)
    assert sorted(st.done_ms) == [i for i in range(len(sources)) if i != 4]
    assert 0 < st.model_s <= st.wall_s and 0 <= st.wait_s + st.pack_s <= st.wall_s
    assert st.frontend_cpu_s > 0 and 0 <= st.host_exposed_fraction <= 1 and 0 < st.frontend_cpu_fraction <= 1
    assert sum(sum(s) for _, s in st.pack_shapes) == st.valid_tokens == sum(r.tokens for r in results if r.ok)


def test_window_must_be_positive(runner):
    with pytest.raises(ValueError, match="window"):
        Pipeline(runner, runner.artifact.frontend, window=0).run(_images(2))


class _FailingRunner:
    """Wraps a runner; its ``fail_on``-th ``infer`` call raises (a device error in the middle of a call)."""

    def __init__(self, inner, fail_on: int) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0

    def infer(self, pack):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("device lost")
        return self.inner.infer(pack)


def test_runner_error_propagates_and_stops_the_front_end(runner):
    import threading

    before = threading.active_count()
    failing = _FailingRunner(runner, fail_on=2)
    pipe = Pipeline(failing, runner.artifact.frontend, Packer(256, 1), workers=2, window=2)
    with pytest.raises(RuntimeError, match="device lost"):
        pipe.run(_images(12, seed=4))
    assert threading.active_count() == before  # the front-end and packing threads were shut down
    assert failing.calls == 2
    ok = Pipeline(runner, runner.artifact.frontend, Packer(256, 1), workers=2, window=2).run(_images(3))
    assert all(r.ok for r in ok)
