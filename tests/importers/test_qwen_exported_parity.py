"""Qwen-VL towers through export and the packing runtime: every attention lowering (ONNX Runtime, reference kernels
for the custom nodes) against transformers from its processor's identical pixels, packing invariance, the
runtime's restoring of each image's token order, and the commands that refuse a tokens artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from navit_deploy.errors import ConfigError, OutputKindError
from navit_deploy.export.lowerings import LOWERINGS
from navit_deploy.model.weights import load_model, model_digest
from tests.importers.test_exported_parity import files  # noqa: F401 - the image files fixture (photo, RGBA, scan, ...)
from tests.importers.test_hf_qwen_vl import _images, max_abs, reference_pixels, reference_tokens

torch = pytest.importorskip("torch")

CASES = [(name, low) for name in ("2.5", "2", "2.5-hd80") for low in LOWERINGS
         if name == "2.5" or low in ("dense", "ort-mha", "ort-packed", "trt-plugin")]


def _export(path, lowering, out):
    from navit_deploy.export.onnx_export import export_onnx

    return export_onnx(load_model(path), out, lowering=lowering, weights_sha256=model_digest(path)).path


def _run(onnx_path, lowering, items, pack_len=2048, max_images=64):
    from navit_deploy.packing import Packer
    from navit_deploy.runtime.onnx_runner import OnnxRunner, native_providers
    from navit_deploy.runtime.pipeline import Pipeline

    runner = OnnxRunner(onnx_path, reference_ops="cpu" not in native_providers(lowering))
    with runner:
        pipe = Pipeline(runner, runner.artifact.frontend, Packer(pack_len, max_images))
        good = dict(enumerate(items))
        return pipe.run_packs(pipe.packer.pack(list(good.values()), list(good)), good)


@pytest.fixture(scope="module")
def pixels():
    return reference_pixels(_images())


@pytest.mark.parametrize("name,lowering", CASES)
def test_every_lowering_matches_transformers_from_identical_pixels(qwen_dirs, pixels, name, lowering, tmp_path):
    path, tower = qwen_dirs[name]
    inp, items = pixels
    if lowering == "trt-plugin" and name == "2.5-hd80":
        with pytest.raises(ConfigError, match="head dim is 80"):
            _export(path, lowering, tmp_path / "m.onnx")
        return
    onnx_path = _export(path, lowering, tmp_path / f"m.{lowering}.onnx")
    ref = reference_tokens(tower, inp)
    packed = _run(onnx_path, lowering, items)
    assert all(r.ok and r.output_kind == "tokens" and r.embedding is None for r in packed)
    got = [r.visual_tokens for r in packed]
    err = max_abs(got, ref)
    alone = [_run(onnx_path, lowering, [it])[0].visual_tokens for it in items]
    inv = max_abs(got, alone)
    print(f"qwen {name} {lowering}: identical pixels max abs {err:.2e}, invariance {inv:.2e}")
    assert err <= 1e-4 and inv <= 1e-5, (err, inv)


@pytest.fixture(scope="module")
def dense(qwen_dirs, tmp_path_factory):
    path, tower = qwen_dirs["2.5"]
    return path, tower, _export(path, "dense", tmp_path_factory.mktemp("qwen_dense") / "m.dense.onnx")


def test_mistake_window_order_not_restored_by_the_runtime(dense, pixels, monkeypatch):
    from navit_deploy.runtime import pipeline

    path, tower, onnx_path = dense
    inp, items = pixels
    ref = reference_tokens(tower, inp)
    real = pipeline.split_tokens
    monkeypatch.setattr(pipeline, "split_tokens", lambda t, cu, unit, order: real(t, cu, unit, None))
    err = max_abs([r.visual_tokens for r in _run(onnx_path, "dense", items)], ref)
    print(f"runtime mistake window order: {err:.3f}")
    assert err > 1e-2


def test_the_artifact_says_tokens_and_old_artifacts_read_as_pooled(dense):
    from navit_deploy.runtime.artifact import DeploymentArtifact, read_artifact

    _, _, onnx_path = dense
    art = read_artifact(onnx_path)
    assert art.output_kind == "tokens" and art.outputs == ("tokens",) and art.window == 4 and art.token_dim == 96
    assert art.inputs[-2:] == ("window_segment_ids", "window_cu_seqlens") and art.pack_len % 4 == 0
    old = {k: v for k, v in art.to_dict().items() if k not in ("output_kind", "inputs", "window", "token_dim")}
    assert DeploymentArtifact.from_dict({**old, "outputs": ["embeddings"]}).output_kind == "pooled"
    with pytest.raises(OutputKindError, match="navit embed"):
        art.require_pooled("navit embed")


def test_results_json_describe_the_tokens(dense, pixels):
    _, _, onnx_path = dense
    r = _run(onnx_path, "dense", pixels[1][:1])[0]
    d = r.to_json([], with_embedding=True)
    assert d["output_kind"] == "tokens" and d["visual_tokens_shape"] == list(r.visual_tokens.shape)
    assert np.allclose(np.array(d["visual_tokens"]), r.visual_tokens)


def test_commands_that_need_pooled_vectors_refuse_a_tokens_model(dense, qwen_dirs, tmp_path, capsys):
    from navit_deploy.cli import main

    path, _, onnx_path = dense
    assert main(["eval", "--onnx", str(onnx_path)]) == 2
    assert "pooled embedding" in capsys.readouterr().err
    assert main(["eval", "--model", str(path)]) == 2
    assert "merged visual tokens" in capsys.readouterr().err
    # navit compile takes tokens exports (window profiles): tests/compile/test_tokens_trt.py
    from navit_deploy.compile.engine import CompileRequest, plan_compile

    plan = plan_compile(CompileRequest(onnx_path, tmp_path / "m.engine"))
    assert plan.profiles


def test_cli_import_writes_a_project_model(qwen_dirs, pixels, tmp_path, capsys):
    from navit_deploy.cli import main

    path, tower = qwen_dirs["2"]
    assert main(["import", str(path), "--out", str(tmp_path / "mine"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "qwen-vl" and info["outputs"] == ["tokens"]
    from tests.importers.test_hf_qwen_vl import ours

    inp, items = pixels
    assert max_abs(ours(load_model(tmp_path / "mine", attention="segment"), items), reference_tokens(tower, inp)) <= 1e-4


@pytest.mark.parametrize("name,lowering", [("2.5", low) for low in LOWERINGS] + [("2", "dense")])
def test_navit_parity_from_files_on_every_lowering(qwen_dirs, files, name, lowering, tmp_path):
    from navit_deploy.parity_run import run_parity
    from navit_deploy.runtime.onnx_runner import native_providers

    path, _ = qwen_dirs[name]
    onnx_path = _export(path, lowering, tmp_path / f"m.{lowering}.onnx")
    runs = {r.check: r for r in run_parity(str(path), str(onnx_path), files,
                                           reference_ops="cpu" not in native_providers(lowering))}
    assert set(runs) == {"source pixels", "source files", "packing invariance"}
    for r in runs.values():
        assert r.passed, (r.check, r.report.failures)
        assert r.report.summary["compared"] == len(files) - 1  # the corrupt file: an error on both sides
    s = {k: r.report.summary for k, r in runs.items()}
    print(f"qwen {name} {lowering}: pixels {s['source pixels']['max_abs_embedding_max']:.2e}, files cosine "
          f"{s['source files']['cosine_min']:.7f}, invariance {s['packing invariance']['max_abs_embedding_max']:.2e}")
    assert s["source pixels"]["max_abs_embedding_max"] <= 1e-4
    assert s["source files"]["cosine_min"] >= 0.9999
    assert s["packing invariance"]["max_abs_embedding_max"] <= 1e-5


def test_cli_parity_on_a_qwen_dir(qwen_dirs, files, tmp_path, capsys):
    from pathlib import Path

    from navit_deploy.cli import main

    path, _ = qwen_dirs["2.5-vision"]
    onnx_path = _export(path, "dense", tmp_path / "m.onnx")
    folder = str(Path(files[0]).parent)
    assert main(["parity", "--model", str(path), "--onnx", str(onnx_path), "--images", folder, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["check"] for c in out["checks"]] == ["source pixels", "source files", "packing invariance"]
    assert out["passed"]


@pytest.mark.parametrize("lowering,slots", [("dense", True), ("dense", False), ("ort-mha", True)])
def test_attention_share_profiles_each_form(qwen_dirs, pixels, tmp_path, lowering, slots):
    from navit_deploy.bench.attention_share import _attention_nodes, profile_share
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.packing import WindowSpec, build_pack

    path, _ = qwen_dirs["2.5"]
    _, items = pixels
    pack = build_pack(items, list(range(len(items))), windows=WindowSpec(2, 4))
    out = export_onnx(load_model(path), tmp_path / "m.onnx", lowering=lowering, window_slots=slots).path
    attn, inner = _attention_nodes(out)
    assert len(attn) >= 2 * 4  # scores and probs @ V in every block; every Loop group's nodes for ort-mha
    assert bool(inner) == (lowering == "ort-mha") and not attn & inner
    share = profile_share(out, [pack.model_inputs()])["attention_share"]
    assert 0.0 < share < 1.0


def test_cli_export_infer_and_quantize_on_a_qwen_dir(qwen_dirs, files, tmp_path, capsys):
    from navit_deploy.cli import main

    path, _ = qwen_dirs["2.5"]
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--model", str(path), "--out", str(onnx_path), "--attention", "dense"]) == 0
    capsys.readouterr()
    assert main(["infer", "--onnx", str(onnx_path), *files]) == 1  # the corrupt file fails, alone
    out = capsys.readouterr()
    assert "photo.jpg: " in out.out and "visual tokens x 96" in out.out and "broken.jpg" in out.err
    assert main(["quantize", "--onnx", str(onnx_path), "--precision", "fp16", "--out", str(tmp_path / "m16.onnx")]) == 0
    assert (tmp_path / "m16.onnx").is_file()
    capsys.readouterr()
    # INT8: calibration packs in window order (six inputs), then visual tokens compared with FP32's
    assert main(["quantize", "--onnx", str(onnx_path), "--precision", "int8", "--out", str(tmp_path / "m8.onnx"),
                 "--max-images", "16", "--eval-size", "8", "--no-cache", "--json"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert (tmp_path / "m8.onnx").is_file(), q
    assert main(["embed", files[0], "--out", str(tmp_path / "e.parquet"), "--onnx", str(onnx_path)]) == 2
    assert "pooled embedding" in capsys.readouterr().err


def test_bench_peers_time_transformers_on_the_same_files(dense, tmp_path):
    from navit_deploy.bench.peers import peers_markdown, run_peers

    path, _, onnx_path = dense
    mha = _export(path, "ort-mha", tmp_path / "m.ort-mha.onnx")
    rep = run_peers(str(path), onnx_path, None, n=3, repeats=1, log=lambda s: None, max_patches=256, onnx_mha=mha)
    rows = {r["config"]: r for r in rep["rows"]}
    assert set(rows) == {"navit-deploy ORT fp32", "navit-deploy ORT fp32 ort-mha", "transformers sdpa b8",
                         "transformers sdpa b32", "transformers eager b8"}
    for ours in ("navit-deploy ORT fp32", "navit-deploy ORT fp32 ort-mha"):
        assert rows[ours]["max_abs_vs_baseline"] <= 1e-4  # equal outputs, per image
    fastest = max(("navit-deploy ORT fp32", "navit-deploy ORT fp32 ort-mha"), key=lambda k: rows[k]["vs_baseline"][0])
    assert f"({fastest}, the fastest fp32 row)" in rep["targets"][0]["target"]
    assert rep["frontend"]["max_pixels"] == 256 * 14 * 14
    assert [t["target"].split(" ")[:3] for t in rep["targets"]] == [["fp32", ">=", "1.5x"]]
    assert "navit-deploy ORT fp32" in peers_markdown(rep)


def test_a_feed_with_windows_longer_than_the_models_is_refused(dense, pixels):
    from dataclasses import replace

    from navit_deploy.errors import InputValidationError
    from navit_deploy.packing import WindowSpec, build_pack
    from navit_deploy.runtime.onnx_runner import OnnxRunner

    _, _, onnx_path = dense
    pack = build_pack(pixels[1][:2], [0, 1], windows=WindowSpec(2, 4))
    bad = replace(pack, window_cu_seqlens=pack.cu_seqlens, window_segment_ids=pack.segment_ids)  # windows = images
    with OnnxRunner(onnx_path) as runner:
        assert runner.infer(pack).tokens.shape == (pack.pack_len // 4, 96)
        with pytest.raises(InputValidationError, match="longer than the model's windows of 64"):
            runner.infer(bad)


def test_error_results_of_a_tokens_model_say_tokens(dense, files):
    """Broken inputs among good ones: their error results say the model's output kind, the others get tokens."""
    from navit_deploy.runtime.open import open_runner, pipeline_for

    _, _, onnx_path = dense
    runner, artifact = open_runner(onnx_path)
    with runner:
        results = pipeline_for(runner, artifact).run([files[0], b"not an image", files[1], None])
    assert [r.ok for r in results] == [True, False, True, False]
    assert {r.output_kind for r in results} == {"tokens"}
    assert all(r.visual_tokens is not None for r in results if r.ok)


def test_navit_pack_packs_a_tower_as_its_runtime_does(dense, files, capsys):
    """``navit pack --model F.onnx`` on a tower: whole merge blocks, the runtime's pack length and packs."""
    from navit_deploy.cli import main
    from navit_deploy.packing.policy import describe_packer
    from navit_deploy.runtime.open import open_runner, pipeline_for

    _, _, onnx_path = dense
    good = [f for f in files if not f.endswith("broken.jpg")]
    assert main(["pack", *good, "--model", str(onnx_path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    runner, artifact = open_runner(onnx_path)
    with runner:
        pipe = pipeline_for(runner, artifact)
    assert rep["budget"] % 4 == 0 and rep["pack_len"] == pipe.packer.pack_len
    assert rep["packing"] == describe_packer(pipe.packer)
    assert all(e["tokens"] % 4 == 0 and e["merged_tokens"] == e["tokens"] // 4 for e in rep["per_image"])


def test_fp16_keeps_the_rmsnorms_in_fp32(dense):
    """Qwen2.5-VL's RMSNorm squares the residual stream (``Pow`` after opset 20's decomposition): in FP16 that
    overflows for |x| > 256, so every node exported from an RMSNorm stays FP32 by default, as LayerNorm does."""
    import onnx

    from navit_deploy.calibration.fp16 import convert_fp16
    from navit_deploy.calibration.graph import classify

    _, _, onnx_path = dense
    model = onnx.load(str(onnx_path))
    rms = {i.name for i in classify(model) if "rms-norm" in i.groups}
    pows = {n.name for n in model.graph.node if n.op_type == "Pow"}
    assert pows and pows <= rms  # every square is an RMSNorm's (9 norms in this tower)
    _, kept = convert_fp16(model)
    assert rms <= set(kept)
    _, kept_ln_only = convert_fp16(model, ("LayerNormalization",))
    assert not rms & set(kept_ln_only)
