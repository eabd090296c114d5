"""``navit bench``: what packing buys, measured side by side on the same weights and backend.

* :mod:`~navit_deploy.bench.workloads`: camera, documents, thumbnails, crops, mixed, a user's folder;
* :mod:`~navit_deploy.bench.measure`: strategies (packed, padded, square, single, AnyRes count), timing,
  host-stage breakdown, camera streaming;
* :mod:`~navit_deploy.packing.policy`: pack capacity and bucketing (the dense mask's pack_len**2);
* :mod:`~navit_deploy.bench.flops`: analytic FLOPs and the measured GEMM peak;
* :mod:`~navit_deploy.bench.suite`: :func:`run_bench`, :func:`bench_summary` (for ``navit deploy``).

Torch is needed only for the PyTorch rows and for exporting a model when no ONNX file is given.
"""

from navit_deploy.bench.suite import BenchConfig, bench_summary, evaluate_targets, run_bench, summary_markdown

__all__ = ["BenchConfig", "bench_summary", "evaluate_targets", "run_bench", "summary_markdown"]
