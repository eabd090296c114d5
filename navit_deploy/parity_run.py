"""Running the parity checks of ``navit parity`` and ``navit deploy``: which references an exported model is held
to, on which images, with which thresholds. Judging is :mod:`navit_deploy.parity`'s.

* A project model (the builtin one, or a directory of ours): the PyTorch model, image by image (fp32
  thresholds for fp32 exports, looser for fp16/int8).
* An imported model, when its source library is installed: the source's own implementation
  (:mod:`navit_deploy.importers.reference`), twice for SigLIP 2: from the source's *identical pixels*
  (the model alone: max abs <= 1e-4 in fp32) and *from the image files* through each side's own
  preprocessing (the front end included: cosine >= 0.9999). vit-pytorch has no processor, so its pixels
  are the project front end's and one check covers both. Without the library, the converted PyTorch model
  is the reference and the report says so.
* Every model: *packing invariance*, each image alone against the runtime's packing (<= 1e-5 in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from navit_deploy.errors import ArtifactMismatchError, BackendUnavailableError
from navit_deploy.parity import ParityReport, Thresholds, compare, thresholds_for
from navit_deploy.runtime.results import ImageResult

E2E_MIN_COSINE = 0.9999  # from image files, front end included (fp32)
INVARIANCE = Thresholds(1e-5, 1e-5, 0.999999, 1.0)


@dataclass(frozen=True)
class ParityRun:
    """One check: what was compared with what, and the comparator's report."""

    check: str  # "pytorch", "source pixels", "source files", "packing invariance"
    reference: str
    report: ParityReport
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.report.passed

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "reference": self.reference, "note": self.note, **self.report.to_json()}


def parity_images(folder: str | None, cache: str | Path | None = None) -> list[str]:
    """Image files in ``folder``, or the builtin real photographs, scans and generated camera/document images
    written as JPEG/PNG files into ``cache`` (a temporary directory when None), so that every check runs from
    files as users have them and reports name them."""
    if folder:
        from navit_deploy.data.image_folder import list_images

        return [str(p) for p in list_images(folder, recursive=True)]
    import tempfile

    from navit_deploy.data.sample_images import write_builtin_samples

    out = Path(cache) if cache is not None else Path(tempfile.mkdtemp(prefix="navit-parity-"))
    return [str(p) for p in write_builtin_samples(out)]


def _e2e(precision: str) -> Thresholds:
    th = thresholds_for(precision)
    return Thresholds(float("inf"), float("inf"), min(E2E_MIN_COSINE, th.min_cosine), th.min_top1_agreement,
                      th.tie_margin)


def _packed_like(reference: Sequence[ImageResult], pipe: Any, prepared: Sequence[Any]) -> list[ImageResult]:
    """The candidate on exactly the reference's prepared images, packed by the runtime's packer."""
    good = {i: p for i, p in enumerate(prepared) if not isinstance(p, ImageResult)}
    names = {i: reference[i].name for i in good}
    out = {r.index: r for r in pipe.run_packs(pipe.packer.pack(list(good.values()), list(good)), good, names)} if good else {}
    return [out.get(i, r) for i, r in enumerate(reference)]


def run_parity(model: str, artifact_path: str, images: Sequence[Any], provider: str = "cpu",
               precision: str | None = None, reference_ops: bool = False, source: bool = True) -> list[ParityRun]:
    """Every parity check of an exported model or engine against its references (see the module docstring)."""
    from navit_deploy.model.weights import model_digest, model_source
    from navit_deploy.packing import Packer
    from navit_deploy.runtime.open import open_runner, pipeline_for
    from navit_deploy.runtime.pipeline import Pipeline

    candidate, artifact = open_runner(artifact_path, provider=provider, reference_ops=reference_ops)
    digest = model_digest(model)
    if artifact.weights_sha256 and artifact.weights_sha256 != digest:
        raise ArtifactMismatchError(f"{artifact_path} was exported from other weights than {model} "
                                    f"({artifact.weights_sha256[:12]} vs {digest[:12]}); re-export or pick the right model")
    precision = precision or artifact.precision
    src = model_source(model)
    runs: list[ParityRun] = []
    with candidate:
        pipe = pipeline_for(candidate, artifact)
        cand_files = pipe.run(images)
        reference, note = None, ""
        if source and not src.is_project:
            from navit_deploy.importers.reference import source_reference

            try:
                reference = source_reference(src.path, src.family)
            except BackendUnavailableError as exc:
                note = f"source library unavailable ({exc}); compared with the converted PyTorch model instead"
        if reference is not None:
            ref_px, prepared = reference.pixels(images)
            runs.append(ParityRun("source pixels", reference.name, compare(ref_px, _packed_like(ref_px, pipe, prepared),
                                                                            precision)))
            if src.family in ("siglip2", "qwen-vl"):
                runs.append(ParityRun("source files", reference.name,
                                      compare(reference.embed(images), cand_files, precision, _e2e(precision),
                                              same_error_type=False)))
        else:
            from navit_deploy.runtime.torch_runner import TorchRunner

            with TorchRunner(model, attention="segment") as torch_ref:
                ref = pipeline_for(torch_ref, artifact).run(images)
            runs.append(ParityRun("pytorch", "navit-deploy PyTorch model (segment attention)", compare(ref, cand_files,
                                                                                                      precision), note))
        alone = Pipeline(candidate, artifact.frontend, Packer(max(2, artifact.frontend.max_tokens_per_image), 1)).run(images)
        inv = INVARIANCE if precision == "fp32" else thresholds_for(precision)
        runs.append(ParityRun("packing invariance", "the same runner, one image per pack", compare(alone, cand_files,
                                                                                                  precision, inv)))
    return runs


def render_runs(runs: Sequence[ParityRun]) -> str:
    """The terminal tables of every check, with its reference and verdict."""
    out = []
    for r in runs:
        out.append(f"== {r.check}: {r.reference}" + (f" ({r.note})" if r.note else ""))
        out.append(r.report.table())
    out.append("PASSED" if all(r.passed for r in runs) else "FAILED: " + ", ".join(r.check for r in runs if not r.passed))
    return "\n".join(out)
