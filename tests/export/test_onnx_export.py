import numpy as np
import onnx
import pytest
import torch

from navit_deploy.errors import ArtifactMismatchError, ConfigError
from navit_deploy.export.lowerings import LOWERINGS, get_lowering
from navit_deploy.model.weights import load_model
from navit_deploy.packing import Packer, build_pack
from navit_deploy.runtime.onnx_runner import OnnxRunner
from tests.conftest import fake_image

PACKS = {
    "one_image": [(5, 7)],
    "one_token_images": [(1, 1), (1, 1), (1, 1)],
    "many_images": [(2, 3)] * 20 + [(1, 1)] * 5,
    "very_different_sizes": [(8, 8), (1, 1), (2, 30), (16, 2), (3, 3)],
    "max_pack": [(8, 8)] * 8,  # 512 tokens, the recorded pack length
}


def _torch_outputs(model_dir, pack):
    model = load_model(model_dir, attention="segment")
    with torch.no_grad():
        e, logit = model(*(torch.from_numpy(a) for a in pack.model_inputs().values()))
    return e.numpy(), logit.numpy()


@pytest.mark.parametrize("lowering", list(LOWERINGS))
@pytest.mark.parametrize("pack_name", list(PACKS))
def test_onnx_matches_pytorch(tiny_model_dir, exported, lowering, pack_name):
    """ONNX Runtime (native for dense; reference kernels for custom nodes) vs PyTorch within 1e-4 (fp32)."""
    rng = np.random.default_rng(7)
    items = [fake_image(rng, h, w) for h, w in PACKS[pack_name]]
    pack = build_pack(items, list(range(len(items))), pack_len=512)
    ref_e, ref_l = _torch_outputs(tiny_model_dir, pack)
    with OnnxRunner(exported(lowering), reference_ops=lowering != "dense") as runner:
        out = runner.infer(pack)
    np.testing.assert_allclose(out.embeddings, ref_e, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.logits, ref_l, atol=1e-4, rtol=0)


def test_dynamic_axes_and_names(exported):
    model = onnx.load(str(exported("dense")))
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in list(model.graph.input) + list(model.graph.output)}
    assert dims == {"patches": ["tokens", 768], "coords": ["tokens", 2], "segment_ids": ["tokens"],
                    "cu_seqlens": ["images_plus_1"], "embeddings": ["images", 128], "logits": ["images", 4]}
    assert not [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]


def _custom_nodes(path, op_type):
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == op_type]


def test_dense_form_has_no_per_layer_mask_guards(exported):
    """The dense lowering adds one ``0/-inf`` bias per layer: no ``Where`` on the scores of every layer and
    no NaN guard (what ``scaled_dot_product_attention`` with a boolean mask exports as)."""
    ops = [n.op_type for n in onnx.load(str(exported("dense"))).graph.node]
    assert "IsNaN" not in ops
    assert ops.count("Softmax") == 2 + 1  # two layers and the pooling head
    assert ops.count("Where") <= 2  # the bias and the pooling head's mask, each built once
    assert ops.count("Gelu") == 2 + 1 and "Tanh" not in ops  # opset 20: one node per GELU


@pytest.mark.parametrize("opset", [17, 20])
def test_opsets_export_the_same_model(tiny_model_dir, tmp_path, opset):
    """Opset 17 (older consumers) spells GELU out; both match PyTorch."""
    from navit_deploy.export.onnx_export import export_onnx

    path = export_onnx(load_model(tiny_model_dir), tmp_path / "m.onnx", opset=opset).path
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == opset
    assert ("Gelu" in [n.op_type for n in model.graph.node]) == (opset >= 20)
    imgs = [fake_image(np.random.default_rng(5), *g) for g in PACKS["very_different_sizes"]]
    pack = build_pack(imgs, list(range(len(imgs))), pack_len=300)
    with OnnxRunner(path) as runner:
        out = runner.infer(pack)
    emb, _ = _torch_outputs(tiny_model_dir, pack)
    np.testing.assert_allclose(out.embeddings, emb, atol=1e-4)


def test_unsupported_opset_is_refused(tiny_model_dir, tmp_path):
    from navit_deploy.export.onnx_export import export_onnx

    with pytest.raises(ConfigError, match="opset 16 is not supported"):
        export_onnx(load_model(tiny_model_dir), tmp_path / "m.onnx", opset=16)
    assert not (tmp_path / "m.onnx").exists()


def test_trt_plugin_node_form(exported):
    nodes = _custom_nodes(exported("trt-plugin"), "NavitPackedAttention")
    assert len(nodes) == 2  # one per layer
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs == {"num_heads": 2, "head_dim": 64, "scale": pytest.approx(0.125), "plugin_version": b"1",
                     "plugin_namespace": b"navit"}
    assert nodes[0].domain == "navit" and len(nodes[0].input) == 4 and nodes[0].input[3] == "cu_seqlens"


def test_ort_packed_node_form(exported):
    nodes = _custom_nodes(exported("ort-packed"), "PackedMultiHeadAttention")
    assert len(nodes) == 2 and nodes[0].domain == "com.microsoft"
    n = nodes[0]
    assert n.input[3] == "" and n.input[5] == "cu_seqlens"  # no bias; token_offset built in the graph
    assert {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["num_heads"] == 2


def test_ort_mha_node_form(exported):
    """One Loop per layer over the pack's segments, each step one unmasked MultiHeadAttention at the model's heads
    and scale; no placeholder or its domain left; contracting and expanding again gives the same outputs."""
    from navit_deploy.export.segment_loop import SEGMENT_DOMAIN, contract_segment_attention, expand_segment_attention

    model = onnx.load(str(exported("ort-mha")))
    loops = [n for n in model.graph.node if n.op_type == "Loop"]
    assert len(loops) == 2
    for loop in loops:
        body = loop.attribute[0].g
        mha = [n for n in body.node if n.op_type == "MultiHeadAttention"]
        assert len(mha) == 1 and mha[0].domain == "com.microsoft" and len(mha[0].input) == 3  # no mask, no bias
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in mha[0].attribute}
        assert attrs == {"num_heads": 2, "scale": pytest.approx(0.125)}
    assert not [n for n in model.graph.node if n.domain == SEGMENT_DOMAIN]
    assert {o.domain for o in model.opset_import} >= {"com.microsoft"}
    assert SEGMENT_DOMAIN not in {o.domain for o in model.opset_import}

    rng = np.random.default_rng(3)
    items = [fake_image(rng, h, w) for h, w in PACKS["very_different_sizes"]]
    feed = build_pack(items, list(range(len(items))), pack_len=200).model_inputs()
    import onnxruntime as ort

    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    before = run(model)
    assert contract_segment_attention(model) == 2
    assert [n.op_type for n in model.graph.node].count("SegmentAttention") == 2 and not any(
        n.op_type == "Loop" for n in model.graph.node)
    assert expand_segment_attention(model) == 2
    for a, b in zip(before, run(model)):
        np.testing.assert_array_equal(a, b)


def test_trt_native_node_form(exported):
    nodes = _custom_nodes(exported("trt-native"), "TRT_Attention")
    assert len(nodes) == 2 and nodes[0].domain == "trt"
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["query_form"] == b"packed_nhd" and attrs["kv_form"] == b"packed_nhd"
        assert n.input[3] == ""  # no mask with a packed query
        assert n.input[4] == "cu_seqlens" and n.input[5] != n.input[4]  # distinct query/kv length tensors
    shapes = onnx.shape_inference.infer_shapes(onnx.load(str(exported("trt-native"))))
    assert shapes.graph.node  # the model stays shape-inferable with the custom nodes


def test_artifact_travels_with_model(exported):
    runner = OnnxRunner(exported("dense"))
    art = runner.artifact
    assert art.lowering == "dense" and art.pack_len == 512 and art.labels == ("a", "b", "c", "d")
    assert art.frontend.max_patches == 64 and len(art.weights_sha256) == 64
    assert exported("dense").with_suffix(".onnx.json").is_file()


def test_unknown_lowering_suggests_fix():
    with pytest.raises(ConfigError, match="did you mean 'trt-plugin'"):
        get_lowering("trt_plugin")


def test_custom_lowerings_refuse_cpu_without_reference(exported):
    with pytest.raises(ArtifactMismatchError, match="runs on"):
        OnnxRunner(exported("trt-plugin"))


def test_packing_independent_results_through_onnx(exported):
    rng = np.random.default_rng(3)
    items = [fake_image(rng, int(rng.integers(1, 9)), int(rng.integers(1, 9))) for _ in range(30)]
    with OnnxRunner(exported("dense")) as runner:
        results = {}
        for pack_len, max_images in ((64, 64), (512, 4), (512, 64)):
            for pack in Packer(pack_len, max_images).pack(items):
                out = runner.infer(pack)
                for row, idx in enumerate(pack.image_index.tolist()):
                    results.setdefault(idx, []).append(out.embeddings[row])
    for embs in results.values():
        assert len(embs) == 3
        np.testing.assert_allclose(embs[0], embs[1], atol=1e-5)
        np.testing.assert_allclose(embs[0], embs[2], atol=1e-5)


def test_plugin_head_dims_are_refused_at_export_with_the_alternatives(tmp_path):
    """SigLIP 2 so400m has 16 heads of 72: the plugin's kernels take 32, 64 or 128, so export says so."""
    from navit_deploy.errors import ConfigError
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.frontend import FrontendConfig
    from navit_deploy.model.config import NaViTConfig
    from navit_deploy.model.navit import NaViT

    net = NaViT(NaViTConfig(dim=144, depth=1, heads=2, pool_heads=2, num_classes=2, frontend=FrontendConfig()))
    with pytest.raises(ConfigError, match=r"head dim is 72 .*dense.*trt-native"):
        export_onnx(net, tmp_path / "m.onnx", lowering="trt-plugin")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name,expected", [("segment_attention_0/Cast_3", True), ("segment_attention_12/pad", True),
                                           ("segment_attention_0_input_cast0", False),  # an FP16 converter's cast
                                           ("segment_attention_x/Slice", False), ("blocks.0/MatMul", False)])
def test_segment_attention_nodes_are_told_by_their_group_name(name, expected):
    from navit_deploy.export.segment_loop import is_segment_attention

    assert is_segment_attention(onnx.helper.make_node("Identity", ["a"], ["b"], name=name)) is expected
