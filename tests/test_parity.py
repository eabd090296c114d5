"""Parity verdicts: thresholds per precision, and INT8 flips of reference near-ties."""

import numpy as np
import pytest

from navit_deploy.parity import THRESHOLDS, compare
from navit_deploy.runtime.results import ImageResult


def _result(i: int, logits: list[float]) -> ImageResult:
    lg = np.asarray(logits, dtype=np.float32)
    return ImageResult(i, f"img{i}", embedding=np.r_[lg, 1.0].astype(np.float32), logits=lg)


def _pair(n: int, flip_margin: float) -> tuple[list[ImageResult], list[ImageResult]]:
    """``n`` images with a clear decision, plus one the candidate flips; the reference won it by ``flip_margin``."""
    ref = [_result(i, [2.0, 0.0, -1.0]) for i in range(n)]
    cand = [_result(i, [1.99, 0.01, -1.0]) for i in range(n)]
    ref.append(_result(n, [0.5 + flip_margin, 0.5, -1.0]))
    cand.append(_result(n, [0.49, 0.51, -1.0]))
    return ref, cand


@pytest.mark.parametrize("margin, passed", [(0.0009, True), (0.009, True), (0.05, False), (1.0, False)])
def test_int8_flip_of_a_near_tie_is_reported_but_not_failed(margin, passed):
    ref, cand = _pair(14, margin)
    rep = compare(ref, cand, "int8")
    assert rep.summary["top1_agreement"] == pytest.approx(14 / 15)  # always reported as measured
    assert rep.passed is passed
    assert rep.summary["near_tie_flips"] == (1 if passed else 0)
    if passed:
        assert rep.summary["top1_agreement_decisive"] == 1.0 and "near-tie" in rep.table()
    else:
        assert any("top-1 agreement 0.9333" in f for f in rep.failures)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_no_tie_allowance_above_int8(precision):
    assert THRESHOLDS[precision].tie_margin == 0.0
    ref, cand = _pair(14, 0.0009)
    rep = compare(ref, cand, precision, THRESHOLDS[precision].__class__(1.0, 1.0, 0.0, 0.995))
    assert not rep.passed and rep.summary["near_tie_flips"] == 0


def test_many_near_tie_flips_cannot_hide_a_broken_model():
    # Every decisive image flips: the allowance for ties does not help.
    ref = [_result(i, [2.0, 0.0, -1.0]) for i in range(10)]
    cand = [_result(i, [0.0, 2.0, -1.0]) for i in range(10)]
    rep = compare(ref, cand, "int8")
    assert not rep.passed and rep.summary["top1_agreement_decisive"] == 0.0


def test_deploy_says_why_no_engine_was_compiled(tmp_path, monkeypatch):
    """Without TensorRT, deploy's compile stage reports the reason instead of failing or staying silent."""
    import navit_deploy.compile.trt_env as trt_env
    from navit_deploy.deploy import _compile, render_markdown
    from navit_deploy.errors import BackendUnavailableError

    def missing():
        raise BackendUnavailableError("TensorRT is not installed here (test)")

    monkeypatch.setattr(trt_env, "import_tensorrt", missing)
    comp, parity = _compile("builtin", tmp_path, [])
    assert comp == {"skipped": "TensorRT is not installed here (test)"} and parity == []
    md = render_markdown({"model": "m", "weights_sha256": "0" * 64, "machine": "x", "processor": "y", "passed": True,
                          "exports": [], "parity": [], "compile": comp})
    assert "Not compiled: TensorRT is not installed here (test)" in md
