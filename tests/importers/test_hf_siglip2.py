"""SigLIP 2 NaFlex imported from transformers checkpoints: parity against transformers' own Siglip2VisionModel
and Siglip2ImageProcessor, and a failing test for each mistake a port commonly makes."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from navit_deploy.errors import CheckpointError
from navit_deploy.frontend import PreparedImage, grid_coords, prepare_image
from navit_deploy.importers import detect_family, import_checkpoint
from navit_deploy.importers.base import load_tensors, patches_ppc_to_cpp
from navit_deploy.model.navit import NaViT
from navit_deploy.model.weights import load_model, load_state, model_digest
from navit_deploy.packing import build_pack
from tests.importers.conftest import MAX_PATCHES, siglip_processor

torch = pytest.importorskip("torch")

P = 16
SIZES = [(300, 100), (64, 64), (90, 500), (30, 20), (1000, 12), (17, 333)]  # (w, h): wide, square, tall, tiny, 83:1


def _images(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _reference_pixels(images):
    """transformers' processor output, per image: patches in the project's layout and the grid."""
    inp = siglip_processor()(images=images, return_tensors="pt")
    out = []
    for b, (h, w) in enumerate(inp["spatial_shapes"].tolist()):
        x = inp["pixel_values"][b, : h * w].numpy()
        out.append(PreparedImage(patches_ppc_to_cpp(x, P), grid_coords(h, w), (h, w), (w * P, h * P), (w * P, h * P)))
    return inp, out


def _ours(net: NaViT, items) -> np.ndarray:
    pack = build_pack(items, list(range(len(items))), pack_len=sum(i.num_tokens for i in items) + 3)
    with torch.no_grad():
        return net(*(torch.from_numpy(a) for a in pack.model_inputs().values()))[0].numpy()


def _reference(model, inp) -> np.ndarray:
    with torch.no_grad():
        return model(**inp).pooler_output.numpy()


@pytest.fixture(scope="module")
def case(siglip_dirs):
    path, reference = siglip_dirs["vision"]
    inp, items = _reference_pixels(_images())
    return path, reference, inp, items, _reference(reference, inp)


@pytest.mark.parametrize("layout", ["vision", "full", "sharded"])
def test_identical_pixels_match_transformers(siglip_dirs, layout, case):
    _, _, inp, items, _ = case
    path, reference = siglip_dirs[layout]
    ref = _reference(reference, inp)
    assert detect_family(path) == "siglip2"
    net = load_model(path, attention="segment")
    assert net.config.family == "siglip2" and net.config.outputs == ("embeddings",)
    out = _ours(net, items)
    assert np.abs(out - ref).max() <= 1e-4, np.abs(out - ref).max()
    assert np.abs(ref).max() > 1.0  # the outputs are not trivially small


def test_the_text_tower_is_never_read(siglip_dirs):
    path, _ = siglip_dirs["full"]
    imported = import_checkpoint(path)
    assert not any(k.startswith(("text_model", "logit_")) for k in imported.state)
    assert imported.digest == model_digest(path)


def test_detected_from_the_files_not_the_name(siglip_dirs, tmp_path):
    path, _ = siglip_dirs["vision"]
    renamed = tmp_path / "vit-pytorch-navit-builtin"  # a misleading name
    shutil.copytree(path, renamed)
    assert detect_family(renamed) == "siglip2"
    (renamed / "config.json").write_text(json.dumps({**json.loads((renamed / "config.json").read_text()),
                                                     "model_type": "clip_vision_model"}))
    assert detect_family(renamed) is None


def test_pickled_weights_are_refused(siglip_dirs, tmp_path):
    path, _ = siglip_dirs["vision"]
    d = tmp_path / "pickled"
    shutil.copytree(path, d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    assert detect_family(d) is None
    with pytest.raises(CheckpointError, match="pickles"):
        import_checkpoint(d, "siglip2")


def test_a_missing_shard_is_a_clear_error(siglip_dirs, tmp_path):
    path, _ = siglip_dirs["sharded"]
    d = tmp_path / "sharded"
    shutil.copytree(path, d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    (d / sorted(set(index["weight_map"].values()))[-1]).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        import_checkpoint(d, "siglip2")


@pytest.mark.parametrize("build", ["pil", "jpeg", "png-rgba", "exif-rotated", "grey"])
def test_front_end_reproduces_the_processor_pixels(siglip_dirs, tmp_path, build):
    """From files as users have them: the project's front end gives transformers' load_image + processor pixels."""
    from transformers.image_utils import load_image

    path, _ = siglip_dirs["vision"]
    fe = load_model(path).config.frontend
    rng = np.random.default_rng(3)
    for w, h in [(640, 480), (35, 20), (123, 777)]:
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        f = tmp_path / f"{build}_{w}.{'png' if 'png' in build else 'jpg'}"
        img = Image.fromarray(arr)
        if build == "png-rgba":
            img = Image.fromarray(np.dstack([arr, rng.integers(0, 255, (h, w), dtype=np.uint8)]), "RGBA")
        elif build == "grey":
            img = img.convert("L")
        exif = None
        if build == "exif-rotated":
            exif = Image.Exif()
            exif[0x0112] = 6  # rotate 90 degrees on display
        img.save(f, **({"exif": exif} if exif is not None else {}))
        src = str(f) if build != "pil" else img
        ours = prepare_image(src, fe)
        _, (theirs,) = _reference_pixels([load_image(src)])
        assert ours.grid == theirs.grid
        np.testing.assert_allclose(ours.patches, theirs.patches, atol=1e-6, rtol=0)


def test_jpeg_draft_decoding_is_opt_in_and_changes_pixels(siglip_dirs):
    path, _ = siglip_dirs["vision"]
    fe = load_model(path).config.frontend
    assert fe.jpeg_draft is False and fe.reducing_gap is None and fe.resample == "bilinear"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8)).save(buf, "JPEG")
    exact = prepare_image(buf.getvalue(), fe)
    drafted = prepare_image(buf.getvalue(), fe.replace(jpeg_draft=True))
    assert exact.grid == drafted.grid
    assert np.abs(exact.patches - drafted.patches).max() > 0.01


def test_packing_invariance(siglip_dirs, case):
    path, _, _, items, _ = case
    net = load_model(path, attention="dense")
    together = _ours(net, items)
    for i, it in enumerate(items):
        np.testing.assert_allclose(_ours(net, [it])[0], together[i], atol=1e-5, rtol=0)
    rev = _ours(net, items[::-1])[::-1]
    np.testing.assert_allclose(rev, together, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------- mistakes a port makes must fail


def _with(imported, **state_changes):
    net = NaViT(imported.config)
    load_state(net, {**imported.state, **state_changes})
    return net.set_attention("segment").eval()


def _gap(net, case) -> float:
    *_, items, ref = case
    return float(np.abs(_ours(net, items) - ref).max())


def test_each_porting_mistake_is_caught(case):
    path, _, _, _, _ = case
    imp = import_checkpoint(path)
    d, c = imp.config.dim, 3
    s = imp.state
    assert _gap(_with(imp), case) <= 1e-4
    probe = load_tensors(path, lambda key: key.endswith("head.probe"))
    (probe,) = probe.values()
    w = s["patch_embed.proj.weight"].reshape(d, c, P, P).permute(0, 2, 3, 1).reshape(d, -1)  # back to (py, px, c)
    q, k, v = s["blocks.0.attn.qkv.weight"].chunk(3)
    mistakes = {
        "patch columns not permuted": _with(imp, **{"patch_embed.proj.weight": w}),
        "q and k swapped": _with(imp, **{"blocks.0.attn.qkv.weight": torch.cat([k, q, v])}),
        "k and v swapped": _with(imp, **{"blocks.0.attn.qkv.weight": torch.cat([q, v, k])}),
        "biases dropped": _with(imp, **{k2: torch.zeros_like(t) for k2, t in s.items() if k2.endswith("qkv.bias")}),
        "MAP probe used as the query, not projected": _with(imp, **{"pool.query": probe.reshape(s["pool.query"].shape)}),
    }
    for what, net in mistakes.items():
        assert _gap(net, case) > 1e-3, f"{what} was not caught"  # ten times the fp32 parity threshold


def test_position_resize_without_antialias_is_caught_by_max_abs_but_not_cosine(case):
    """Plain bilinear instead of the antialiased resize moves the pooled output far beyond 1e-4."""
    import torch.nn.functional as F

    path, _, _, items, ref = case
    net = load_model(path, attention="segment")
    table = net.pos_embed.table.detach().reshape(16, 16, -1).permute(2, 0, 1)[None]

    def plain(coords, segment_ids, cu_seqlens):
        out = torch.zeros(coords.shape[0], table.shape[1])
        for b in range(cu_seqlens.shape[0] - 1):
            s, e = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
            h, w = int(coords[s:e, 0].max()) + 1, int(coords[s:e, 1].max()) + 1
            grid = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
            out[s:e] = grid[0].permute(1, 2, 0).reshape(h * w, -1)
        return out

    net.pos_embed.forward = plain
    out = _ours(net, items)
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert np.abs(out - ref).max() > 1e-2
    assert cos.min() > 0.99  # a cosine check would have passed it


def test_exact_gelu_instead_of_tanh_is_caught(case):
    path, *_ = case
    imp = import_checkpoint(path)
    from dataclasses import replace

    net = NaViT(replace(imp.config, gelu="exact"))
    load_state(net, imp.state)
    assert _gap(net.set_attention("segment").eval(), case) > 2e-4  # twice the fp32 parity threshold


def test_default_init_would_hide_dropped_biases(tmp_path):
    """Why the checkpoints are perturbed: with transformers' init the q/k/v biases are zero, so dropping them
    changes nothing."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    from tests.importers.conftest import SIGLIP_VISION

    torch.manual_seed(0)
    Siglip2VisionModel(Siglip2VisionConfig(**SIGLIP_VISION)).eval().save_pretrained(tmp_path)
    siglip_processor().save_pretrained(tmp_path)
    imp = import_checkpoint(tmp_path)
    assert all(float(t.abs().max()) == 0.0 for k, t in imp.state.items() if k.endswith("qkv.bias"))
