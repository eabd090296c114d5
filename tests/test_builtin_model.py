"""The shipped model: loads, exports, and its held-out accuracy is exactly the number the README states."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_number(key: str) -> float:
    m = re.search(rf"<!-- {key} -->\s*\**([0-9.]+)", README.read_text())
    assert m, f"README.md has no '<!-- {key} -->' number"
    return float(m.group(1))


def test_builtin_held_out_top1_matches_readme():
    pytest.importorskip("torch")
    from navit_deploy.data.procedural import DEFAULT_TEST_SIZE, ProceduralDataset
    from navit_deploy.evaluation import evaluate
    from navit_deploy.runtime import Pipeline
    from navit_deploy.runtime.torch_runner import TorchRunner

    runner = TorchRunner("builtin", attention="segment")
    with runner:
        report = evaluate(Pipeline(runner, runner.model.config.frontend), ProceduralDataset("test", DEFAULT_TEST_SIZE))
    assert report.images == DEFAULT_TEST_SIZE and report.failed == 0
    assert report.top1 == pytest.approx(_readme_number("builtin:navit-top1"), abs=5e-4)


def test_builtin_is_small_safetensors_with_config():
    from navit_deploy.model.weights import builtin_model_dir

    d = builtin_model_dir()
    weights = d / "model.safetensors"
    assert weights.stat().st_size < 25e6
    assert not weights.read_bytes().startswith(b"\x80")  # not a pickle
    assert (d / "config.json").is_file()
