"""The command line as a new user meets it: help on every option, clean errors, exit codes CI can gate on."""

import json

import pytest

from navit_deploy.cli import main


def _bench_report(passed: bool) -> dict:
    check = {"target": "packed >= 1.5x single", "value": "1.2x", "passed": passed}
    return {"rows": [], "sweep": [], "sweep_best": [], "streaming": None, "targets": [
        {"workload": "mixed", "checks": [check], "info": []}], "skipped": [], "plots": []}


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_bench_check_exits_1_on_a_miss(monkeypatch, tmp_path, capsys, json_flag):
    import navit_deploy.bench.suite as suite

    args = ["bench", "--out", str(tmp_path), *json_flag]
    monkeypatch.setattr(suite, "run_bench", lambda cfg, **kw: _bench_report(passed=False))
    assert main(args) == 0  # without --check a miss is reported, not gated on
    assert main([*args, "--check"]) == 1
    assert "1 target(s) missed: mixed: packed >= 1.5x single" in capsys.readouterr().err
    monkeypatch.setattr(suite, "run_bench", lambda cfg, **kw: _bench_report(passed=True))
    assert main([*args, "--check"]) == 0


@pytest.mark.parametrize("passed", [False, True])
def test_bench_check_gates_on_the_peers_targets(passed):
    """``--peers transformers`` targets (e.g. issue 13's FP32 >= 1.5x) count for ``--check`` like the others."""
    from navit_deploy.commands.bench_cmds import missed_targets

    report = {**_bench_report(passed=True), "peers": {"targets": [
        {"target": "fp32 >= 1.5x transformers sdpa b8", "value": "0.5x", "passed": passed}]}}
    assert missed_targets(report) == ([] if passed else ["peers: fp32 >= 1.5x transformers sdpa b8"])


def _options_without_help(parser, prefix="navit") -> list[str]:
    import argparse

    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _options_without_help(sub, f"{prefix} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_has_help():
    from navit_deploy.cli import build_parser

    assert _options_without_help(build_parser()) == []


@pytest.fixture
def pngs(tmp_path):
    import numpy as np
    from PIL import Image

    paths = []
    for i, size in enumerate([(320, 180), (90, 300), (1000, 700), (40, 40)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("navit-deploy ")


def test_top_k_zero_refused(exported, pngs, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--onnx", str(exported("dense")), pngs[0], "--top-k", "0"])
    assert exc.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_json_commands_print_errors_as_json(tmp_path, pngs, capsys):
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    assert main(["infer", "--onnx", str(tmp_path / "x.onnx"), pngs[0], "--json"]) == 2
    captured = capsys.readouterr()
    err = json.loads(captured.out)
    assert err["error_type"] == "ArtifactMismatchError" and err["command"] == "infer" and err["error"]
    assert "ArtifactMismatchError" in captured.err
    assert main(["pack", pngs[0], "--model", str(tmp_path / "missing.onnx"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error_type"] == "ArtifactMismatchError"


def test_pack_agrees_with_infer_on_tokens_and_packing(exported, pngs, capsys):
    from navit_deploy.runtime.onnx_runner import OnnxRunner
    from navit_deploy.runtime.open import pipeline_for

    onnx = str(exported("dense"))
    assert main(["pack", *pngs, "--model", onnx, "--json"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert main(["infer", "--onnx", onnx, *pngs, "--json"]) == 0
    inferred = json.loads(capsys.readouterr().out)
    assert [e["tokens"] for e in packed["per_image"]] == [e["tokens"] for e in inferred]
    with OnnxRunner(onnx) as runner:
        runtime_packer = pipeline_for(runner, runner.artifact).packer
        assert packed["budget"] == runner.artifact.frontend.max_tokens_per_image
    assert packed["pack_len"] == runtime_packer.pack_len
    from navit_deploy.packing.policy import describe_packer

    assert packed["packing"] == describe_packer(runtime_packer)
    # --pack-len gives padded packs of that length, as infer --pack-len does.
    assert main(["pack", *pngs, "--model", onnx, "--pack-len", "512", "--json"]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert {p["tokens"] for p in fixed["per_pack"]} == {512}


def test_pack_default_model_is_the_builtin_budget(pngs, capsys):
    from navit_deploy.model.weights import model_config

    assert main(["pack", *pngs, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["budget"] == model_config("builtin").frontend.max_tokens_per_image
    assert max(e["tokens"] for e in rep["per_image"]) <= rep["budget"]


def test_pack_png_in_missing_folder_is_a_message(pngs, tmp_path, capsys):
    assert main(["pack", pngs[0], "--png", str(tmp_path / "missing_dir" / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and "does not exist" in err


def test_pack_json_into_a_closed_pipe_exits_cleanly(pngs):
    import os
    import subprocess
    import sys
    from pathlib import Path

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: every write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "navit_deploy.cli", "pack", *pngs, "--json"], stdout=write_end,
                              stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1], timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr, proc.stderr.decode()


def test_hints_name_flags_the_cli_has(exported, pngs, tmp_path, capsys):
    """ImageTooLargeError names --max-image-pixels, and infer takes it; a custom-node lowering names
    --reference-ops, and infer takes it."""
    onnx = str(exported("dense"))
    assert main(["infer", "--onnx", onnx, pngs[2], "--max-image-pixels", "1000", "--json"]) == 1
    entry = json.loads(capsys.readouterr().out)[0]
    assert entry["error_type"] == "ImageTooLargeError" and "--max-image-pixels" in entry["error"]
    assert main(["infer", "--onnx", onnx, pngs[2], "--max-image-pixels", str(10 ** 6), "--json"]) == 0
    capsys.readouterr()
    assert main(["infer", "--onnx", onnx, pngs[2], "--max-patches", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["tokens"] <= 16
    plugin = str(exported("trt-plugin"))
    assert main(["infer", "--onnx", plugin, pngs[0]]) == 2
    assert "--reference-ops" in capsys.readouterr().err
    assert main(["infer", "--onnx", plugin, pngs[0], "--reference-ops", "--json"]) == 0
    capsys.readouterr()


def test_infer_json_reports_the_files_size_and_units(exported, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 1411, 3), dtype=np.uint8)).save(path)
    assert main(["infer", "--onnx", str(exported("dense")), str(path), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)[0]
    assert entry["original_size"] == [1411, 700]
    gh, gw = entry["grid"]
    assert entry["resized_size"] == [gw * 16, gh * 16]  # grid rows x cols, sizes width x height
    assert "rows x cols" in entry["units"]["grid"] and "width x height" in entry["units"]["original_size"]


def test_parity_names_images_by_file_and_prints_the_thresholds(exported, tiny_model_dir, pngs, tmp_path, capsys):
    """Issue 15 item 7: rows name the files (not ``<PIL RGB WxH>``), and the thresholds applied are printed
    beside the tolerance that would have passed."""
    import shutil

    folder = tmp_path / "parity_images"
    folder.mkdir()
    for p in pngs:
        shutil.copy(p, folder)
    assert main(["parity", "--model", str(tiny_model_dir), "--onnx", str(exported("dense")),
                 "--images", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "<PIL" not in out
    assert all(f"img{i}.png" in out for i in range(len(pngs)))
    assert "thresholds: max|dEmb| <= 1e-04" in out and "would pass with:" in out
