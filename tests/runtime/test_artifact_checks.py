"""An artifact that does not describe its model is refused with a typed error, never run into a wrong answer."""

import json
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

from navit_deploy.errors import ArtifactMismatchError
from navit_deploy.runtime import Pipeline
from navit_deploy.runtime.artifact import METADATA_KEY, read_artifact, sidecar_path
from navit_deploy.runtime.onnx_runner import OnnxRunner


@pytest.fixture
def model(exported, tmp_path):
    """A private copy of the tiny dense export with its sidecar."""
    src = exported("dense")
    dst = tmp_path / "m.onnx"
    shutil.copy(src, dst)
    shutil.copy(sidecar_path(src), sidecar_path(dst))
    return dst


def _edit_sidecar(path, **changes):
    side = sidecar_path(path)
    d = json.loads(side.read_text())
    for k, v in changes.items():
        if isinstance(v, dict):
            d[k].update(v)
        else:
            d[k] = v
    side.write_text(json.dumps(d))


def _strip_metadata(path):
    proto = onnx.load(str(path))
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(path))


def test_matching_sidecar_and_metadata_open(model):
    with OnnxRunner(model) as r:
        out = Pipeline(r, r.artifact.frontend).run([Image.new("RGB", (64, 48), (10, 200, 30))])
    assert out[0].ok


@pytest.mark.parametrize("changes,match", [
    ({"weights_sha256": "0" * 64}, "weights_sha256"),
    ({"frontend": {"patch_size": 14}}, "frontend.patch_size"),
    ({"labels": ["w", "x", "y", "z"]}, "labels"),
])
def test_a_sidecar_that_disagrees_with_the_metadata_is_refused(model, changes, match):
    _edit_sidecar(model, **changes)
    with pytest.raises(ArtifactMismatchError, match=f"disagrees with the metadata.*{match}"):
        OnnxRunner(model)


def test_a_broken_sidecar_beside_metadata_is_refused(model):
    sidecar_path(model).write_text("{not json")
    with pytest.raises(ArtifactMismatchError, match="unreadable artifact description.*counts"):
        OnnxRunner(model)


def test_metadata_alone_is_enough(model):
    sidecar_path(model).unlink()
    assert OnnxRunner(model).artifact == read_artifact(model, {p.key: p.value for p in onnx.load(str(model)).metadata_props})


@pytest.mark.parametrize("changes,match", [
    ({"frontend": {"patch_size": 14}}, "patch width .C\\*p\\*p. 768, the artifact says 588"),
    ({"dim": 256}, "embedding width 128, the artifact says 256"),
])
def test_a_sidecar_alone_must_match_the_model_shapes(model, changes, match):
    _strip_metadata(model)
    _edit_sidecar(model, **changes)
    runner = OnnxRunner(model)  # the description alone cannot be checked before the model is loaded
    with pytest.raises(ArtifactMismatchError, match=match):
        runner.activate()
    assert runner.session is None and not runner.is_active


def test_an_empty_model_file_is_refused_at_open(model):
    model.write_bytes(b"")
    with pytest.raises(ArtifactMismatchError, match="empty"):
        OnnxRunner(model)


def test_a_file_that_is_no_onnx_graph_is_refused_at_open(model):
    model.write_bytes(b"\x00" * 64)  # parses as an empty ModelProto
    with pytest.raises(ArtifactMismatchError, match="not a|no ONNX graph"):
        OnnxRunner(model)


def test_a_model_replaced_between_activations_is_refused(model, tmp_path):
    runner = OnnxRunner(model)
    with runner:
        first = runner.infer(_pack(runner))
    proto = onnx.load(str(model))
    proto.doc_string = "another build"  # other bytes, the same description: only the hash can tell
    onnx.save(proto, str(tmp_path / "other.onnx"))
    shutil.copy(tmp_path / "other.onnx", model)
    with pytest.raises(ArtifactMismatchError, match="changed on disk since this runner opened it"):
        runner.activate()
    assert not runner.is_active
    fresh = OnnxRunner(model)  # a new runner for the new file is fine
    with fresh:
        np.testing.assert_allclose(fresh.infer(_pack(fresh)).embeddings, first.embeddings, atol=1e-5)


def _pack(runner):
    from navit_deploy.frontend import prepare_pil
    from navit_deploy.packing import Packer

    img = prepare_pil(Image.new("RGB", (64, 32), (200, 100, 0)), runner.artifact.frontend)
    return Packer(64, 4).pack([img])[0]
