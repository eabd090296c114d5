"""``navit parity``: the same images through a reference runner and a candidate, judged image by image.

Like Polygraphy's comparator: per-image max/mean abs differences and cosine similarity, a summary with
max/mean/median, top-1 agreement, thresholds per precision, and the tolerance that would have passed.
Runner-agnostic (torch, ONNX Runtime, TensorRT). Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from navit_deploy.errors import ConfigError
from navit_deploy.runtime.results import ImageResult


@dataclass(frozen=True)
class Thresholds:
    """Limits a candidate must meet against the reference, for one precision."""

    max_abs_embedding: float
    max_abs_logit: float
    min_cosine: float
    min_top1_agreement: float
    # A reference decision whose top-1 logit leads the runner-up by less than this is a tie at this
    # precision's noise level: a candidate that flips it still counts in ``top1_agreement`` (reported)
    # but not in the agreement the threshold is checked on.
    tie_margin: float = 0.0


# fp32: the exported graph must compute the same function (tight). fp16: half precision rounding through
# a few layers. int8: quantization noise; embeddings stay close in direction and decisions mostly agree.
# INT8 logits move by a few hundredths, so a reference decision won by less than 0.01 is a coin toss for
# any INT8 model; on a 15-image parity set one such flip alone would read as 93% agreement.
THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(1e-4, 1e-4, 0.99999, 1.0),
    "fp16": Thresholds(5e-2, 5e-2, 0.999, 0.995),
    "int8": Thresholds(float("inf"), float("inf"), 0.98, 0.95, tie_margin=0.01),
}


def thresholds_for(precision: str) -> Thresholds:
    if precision not in THRESHOLDS:
        raise ConfigError(f"no parity thresholds for precision {precision!r}; choose one of {sorted(THRESHOLDS)}")
    return THRESHOLDS[precision]


@dataclass(frozen=True)
class ImageParity:
    name: str
    max_abs_embedding: float
    max_abs_logit: float
    cosine: float
    top1_match: bool
    error: str | None = None
    reference_margin: float = float("inf")  # reference top-1 logit minus its runner-up


@dataclass(frozen=True)
class ParityReport:
    images: list[ImageParity]
    precision: str
    thresholds: Thresholds
    summary: dict[str, float]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "precision": self.precision,
            "thresholds": asdict(self.thresholds),
            "summary": self.summary,
            "failures": self.failures,
            "images": [asdict(i) for i in self.images],
        }

    def table(self) -> str:
        """A terminal table: one row per image (named by its file), the summary, the thresholds applied, the
        tolerance that would have passed, and the verdict. Logit columns only for models with logits."""
        s, th = self.summary, self.thresholds
        logits = s.get("has_logits", True)
        head = f"{'image':<40} {'max|dEmb|':>10}" + (f" {'max|dLogit|':>11}" if logits else "") + f" {'cosine':>10}"
        rows = [head + (f" {'top1':>5}" if logits else "")]
        for i in self.images:
            name = i.name if len(i.name) <= 40 else "..." + i.name[-37:]
            if i.error:
                rows.append(f"{name:<40} error: {i.error}")
                continue
            rows.append(f"{name:<40} {i.max_abs_embedding:>10.2e}" + (f" {i.max_abs_logit:>11.2e}" if logits else "")
                        + f" {i.cosine:>10.7f}" + (f" {'ok' if i.top1_match else 'DIFF':>5}" if logits else ""))
        agree = (f"; top-1 agreement {s['top1_agreement']:.4f}"
                 + (f" ({s['top1_agreement_decisive']:.4f} without {s['near_tie_flips']} flipped near-tie(s))"
                    if s["near_tie_flips"] else "")) if logits else ""
        rows.append(f"summary ({self.precision}): max|dEmb| max {s['max_abs_embedding_max']:.2e} mean "
                    f"{s['max_abs_embedding_mean']:.2e} median {s['max_abs_embedding_median']:.2e}; "
                    f"min cosine {s['cosine_min']:.7f}" + agree)
        applied = [f"max|dEmb| <= {th.max_abs_embedding:.0e}" if th.max_abs_embedding != float("inf") else None,
                   f"max|dLogit| <= {th.max_abs_logit:.0e}" if logits and th.max_abs_logit != float("inf") else None,
                   f"cosine >= {th.min_cosine}", f"top-1 agreement >= {th.min_top1_agreement}" if logits else None]
        rows.append("thresholds: " + ", ".join(a for a in applied if a))
        rows.append(f"would pass with: max|dEmb| <= {s['max_abs_embedding_max']:.2e}"
                    + (f", max|dLogit| <= {s['max_abs_logit_max']:.2e}" if logits else "")
                    + f", cosine >= {s['cosine_min']:.7f}")
        rows.append("PASSED" if self.passed else "FAILED: " + "; ".join(self.failures))
        return "\n".join(rows)


def _margin(logits: np.ndarray) -> float:
    """Top-1 logit minus the runner-up (inf with a single class)."""
    if logits.size < 2:
        return float("inf")
    top2 = np.partition(logits.astype(np.float64), -2)[-2:]
    return float(top2[1] - top2[0])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na and nb else float(na == nb)


def compare(reference: Sequence[ImageResult], candidate: Sequence[ImageResult], precision: str = "fp32",
            thresholds: Thresholds | None = None, same_error_type: bool = True) -> ParityReport:
    """Compare per-image outputs; images that failed in either runner are reported and counted as failures,
    except a bad input both reject (with the same error type, unless ``same_error_type=False``: a source
    library names its own errors)."""
    th = thresholds or thresholds_for(precision)
    per: list[ImageParity] = []
    skipped = 0
    for r, c in zip(reference, candidate, strict=True):
        if not (r.ok and c.ok):
            same = not r.ok and not c.ok and (r.error_type == c.error_type or not same_error_type)
            skipped += same  # a bad input both runners reject identically is not a parity failure
            per.append(ImageParity(r.name, float("nan"), float("nan"), float("nan"), False,
                                   ("both: " if same else "one runner: ") + str(r.error or c.error)))
            continue
        rv, cv = r.vector, c.vector
        assert rv is not None and cv is not None
        if r.output_kind != c.output_kind or rv.shape != cv.shape:
            raise ConfigError(f"{r.name}: the runners return different outputs ({r.output_kind} {list(rv.shape)} vs "
                              f"{c.output_kind} {list(cv.shape)}); they run different models")
        if (r.logits is None) != (c.logits is None):
            raise ConfigError(f"{r.name}: one runner has logits and the other has none; they run different models")
        if r.logits is None or c.logits is None:  # an embedding model: nothing to compare but the embedding
            dlogit, match, margin = 0.0, True, float("inf")
        else:
            dlogit, match, margin = float(np.abs(r.logits - c.logits).max()), r.top1 == c.top1, _margin(r.logits)
        per.append(ImageParity(r.name, float(np.abs(rv - cv).max()), dlogit,
                               _cos(rv.astype(np.float64), cv.astype(np.float64)), match,
                               reference_margin=margin))
    ok = [p for p in per if p.error is None]
    if not ok:
        raise ConfigError("parity needs at least one image that both runners processed")
    emb = np.array([p.max_abs_embedding for p in ok])
    logit = np.array([p.max_abs_logit for p in ok])
    cos = np.array([p.cosine for p in ok])
    agree = float(np.mean([p.top1_match for p in ok]))
    ties = [p for p in ok if not p.top1_match and p.reference_margin < th.tie_margin]
    decisive = [p for p in ok if p.reference_margin >= th.tie_margin or p.top1_match]
    agree_decisive = float(np.mean([p.top1_match for p in decisive])) if decisive else 1.0
    summary = {
        "images": len(per), "compared": len(ok),
        "max_abs_embedding_max": float(emb.max()), "max_abs_embedding_mean": float(emb.mean()),
        "max_abs_embedding_median": float(np.median(emb)), "max_abs_logit_max": float(logit.max()),
        "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "top1_agreement": agree,
        "top1_agreement_decisive": agree_decisive, "near_tie_flips": len(ties),
        "has_logits": any(r.logits is not None for r in reference if r.ok),
    }
    failures = []
    if len(ok) + skipped < len(per):
        failures.append(f"{len(per) - len(ok) - skipped} image(s) failed in one runner only")
    if summary["max_abs_embedding_max"] > th.max_abs_embedding:
        failures.append(f"max|dEmb| {summary['max_abs_embedding_max']:.2e} > {th.max_abs_embedding:.0e}")
    if summary["max_abs_logit_max"] > th.max_abs_logit:
        failures.append(f"max|dLogit| {summary['max_abs_logit_max']:.2e} > {th.max_abs_logit:.0e}")
    if summary["cosine_min"] < th.min_cosine:
        failures.append(f"min cosine {summary['cosine_min']:.6f} < {th.min_cosine}")
    if agree_decisive < th.min_top1_agreement:
        failures.append(f"top-1 agreement {agree_decisive:.4f} < {th.min_top1_agreement}"
                        + (f" (not counting {len(ties)} flipped near-tie(s))" if ties else ""))
    return ParityReport(per, precision, th, summary, failures)
