#!/usr/bin/env python3
"""The GPU check in one command (run through scripts/gpu_check.sh): build, test and time the packed-attention
kernel and run the PyTorch NaViT with varlen attention against dense, on a GPU machine with CUDA PyTorch (no
TensorRT needed). Writes one JSON report, OUT/gpu_check.json, and a log per step.

Steps, each a subprocess with its own timeout inside an overall budget (default 420 s):
  environment   GPU, torch, CUDA, nvcc and cmake versions
  build         scripts/check_plugin_build.sh --kernel-only OUT/build, CUDA_ARCHS = the GPU's sm (90 without a GPU);
                without cmake, the same library with nvcc alone (plugin_lib.compile_kernel_library)
  kernel_tests  pytest tests/plugins/test_packed_attention_kernel.py against the built library (fp32/fp16, head
                dims 32/64/128 and 72 refused, one-token images, a 16,384-token pack, CUDA graphs)
  kernel_bench  plugins/packed_attention/bench_kernel.py: the kernel against varlen_attn, flash SDPA, a dense mask
  navit_varlen  scripts/navit_varlen_check.py: NaViT with varlen attention against dense, fp16 on the GPU
The report also says which requested head dims (--head-dims, default 64 72 128) the built library has kernels for.

--dry-run (no GPU needed): the build really compiles with nvcc; the tests run their CPU part and the GPU part
skips with its reason; the benchmark and the NaViT check run their no-GPU paths. Exit status 0 when every step
passed, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from navit_deploy.compile import plugin_lib  # noqa: E402  (torch-free)

REPORT_FORMAT = 1
STEP_BUDGETS = {"build": 180, "kernel_tests": 150, "kernel_bench": 150, "navit_varlen": 90}
MIN_STEP_SECONDS = 5  # a step with less time left in the budget is not started
NO_GPU_REASON = "no CUDA GPU available"  # what the kernel tests say when they skip for lack of a GPU


@dataclass
class Step:
    """One step of the check, as it appears in the report."""

    name: str
    status: str = "skipped"  # ok | failed | timeout | skipped
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)
    returncode: int | None = None
    log: str | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def run_step(step: Step, cmd: list[str], out: Path, timeout: float, env: dict[str, str] | None = None) -> Step:
    """Run ``cmd`` from the repository root, output to OUT/<step>.log; killed with its children after ``timeout``."""
    log = out / f"{step.name}.log"
    step.command, step.log = [str(c) for c in cmd], str(log)
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(step.command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            step.returncode = proc.wait(timeout=timeout)
            step.status = "ok" if step.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            step.status, step.reason = "timeout", f"killed after {timeout:.0f} s"
    step.seconds = round(time.monotonic() - start, 2)
    if step.status == "failed":
        step.reason = f"exit status {step.returncode}; last lines: " + " | ".join(log.read_text().splitlines()[-5:])
    return step


def tool_version(cmd: list[str], marker: str) -> str | None:
    """The first line of ``cmd``'s output containing ``marker`` (e.g. nvcc's "release" line); None if it fails."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return next((line.strip() for line in out.splitlines() if marker in line), None)


def load_json(path: Path) -> dict[str, Any]:
    """A step's JSON, with NaN/Infinity (a method that could not run) read as null."""
    return json.loads(path.read_text(), parse_constant=lambda _: None)


def environment(python: str) -> Step:
    """Versions and the GPU, from the Python that runs the steps."""
    step = Step("environment")
    probe = ("import json, torch; c = torch.cuda.is_available(); p = torch.cuda.get_device_properties(0) if c else None;"
             "print(json.dumps({'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'gpu': None if p is None "
             "else {'name': p.name, 'sm': f'{p.major}{p.minor}', 'memory_gib': round(p.total_memory / 2**30, 1), "
             "'multiprocessors': p.multi_processor_count}}))")
    start = time.monotonic()
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        step.status, step.reason = "failed", f"could not query torch with {python}: {exc}"
        return step
    finally:
        step.seconds = round(time.monotonic() - start, 2)
    nvcc, cmake = plugin_lib.find_nvcc(), shutil.which("cmake")
    step.details = {"python": python, "platform": platform.platform(), "hostname": platform.node(),
                    "nvcc": tool_version([nvcc, "--version"], "release") if nvcc else None,
                    "cmake": tool_version([cmake, "--version"], "version") if cmake else None}
    if proc.returncode != 0:
        step.status, step.reason = "failed", f"torch could not be imported: {proc.stderr.strip()[-400:]}"
        return step
    step.details.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    step.status = "ok"
    return step


def junit_summary(path: Path) -> dict[str, Any]:
    """Counts, skip reasons and failures from pytest's JUnit XML."""
    summary: dict[str, Any] = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "skip_reasons": {}, "failures": []}
    if not path.is_file():
        return summary
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag: child for child in case}
        if "skipped" in kinds:
            summary["skipped"] += 1
            reason = (kinds["skipped"].get("message") or "").strip()
            summary["skip_reasons"][reason] = summary["skip_reasons"].get(reason, 0) + 1
        elif "failure" in kinds or "error" in kinds:
            key = "failed" if "failure" in kinds else "errors"
            summary[key] += 1
            summary["failures"].append({"test": name, "message": (kinds.get("failure", kinds.get("error")).get("message")
                                                                  or "")[:400]})
        else:
            summary["passed"] += 1
    return summary


def judge_tests(step: Step, summary: dict[str, Any], dry_run: bool) -> None:
    """On a GPU every test must pass (no skips); in a dry run the CPU part must pass and only GPU tests skip."""
    step.details = summary
    if summary["failed"] or summary["errors"] or not summary["passed"]:
        step.status = "failed"
        step.reason = step.reason or f"{summary['failed']} failed, {summary['errors']} errors, {summary['passed']} passed"
        return
    other_skips = [r for r in summary["skip_reasons"] if NO_GPU_REASON not in r]
    if other_skips or (summary["skipped"] and not dry_run):
        step.status = "failed"
        step.reason = f"tests skipped: {sorted(summary['skip_reasons'])}"


def head_dim_report(library: Path | None, head_dims: list[int]) -> dict[str, str]:
    """Ask the built library which head dims it has kernels for (a zero-token launch; no GPU needed)."""
    if library is None or not library.is_file():
        return {str(d): "unknown: no kernel library" for d in head_dims}
    lib = plugin_lib.load_kernel_library(library)
    report = {}
    for d in head_dims:
        ok, text = plugin_lib.library_supports_head_dim(lib, d)
        report[str(d)] = "supported" if ok else (f"unsupported: no kernel for head_dim {d} (kernels exist for "
                                                 f"{', '.join(map(str, plugin_lib.SUPPORTED_HEAD_DIMS))}); the launch "
                                                 f"returns '{text}'")
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu_check", help="report directory")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: compile and check every step's no-GPU path")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all steps together (default 420)")
    parser.add_argument("--arch", help="CUDA architecture to build, e.g. 90 (default: the GPU's, else 90)")
    parser.add_argument("--kernel-lib", type=Path, help="use this prebuilt kernel library instead of building")
    parser.add_argument("--python", default=sys.executable, help="Python (with torch) that runs the steps")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 72, 128])
    parser.add_argument("--bench-iters", type=int, default=20)
    args = parser.parse_args(argv)
    if args.budget <= 0 or args.bench_iters < 1:
        parser.error("--budget and --bench-iters must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.now(timezone.utc), time.monotonic()
    deadline = t0 + args.budget
    env_step = environment(args.python)
    steps = [env_step]
    gpu = env_step.details.get("gpu")
    if env_step.status == "ok" and gpu is None and not args.dry_run:
        env_step.status = "failed"
        env_step.reason = f"{NO_GPU_REASON} (torch.cuda.is_available() is False); run with --dry-run to check the setup"
    arch = args.arch or (gpu["sm"] if gpu else "90")
    library = args.kernel_lib.resolve() if args.kernel_lib else out / "build" / plugin_lib.KERNEL_LIBRARY_NAME
    env = {**os.environ, "CUDA_ARCHS": arch, plugin_lib.KERNEL_LIB_ENV: str(library), "PYTHONPATH": str(ROOT)}
    dry = ["--dry-run"] if args.dry_run else []
    build = ["bash", "scripts/check_plugin_build.sh", "--kernel-only", str(out / "build")]
    if shutil.which("cmake") is None:  # a bare GPU box may have nvcc but no cmake: the same library, nvcc alone
        build = [args.python, "-c", "import sys; from navit_deploy.compile.plugin_lib import compile_kernel_library as c;"
                 " print(c(sys.argv[1], 'sm_' + sys.argv[2]))", str(out / "build"), arch]
    commands = {
        "build": build,
        "kernel_tests": [args.python, "-m", "pytest", "tests/plugins/test_packed_attention_kernel.py", "-q",
                         "-p", "no:cacheprovider", "-rs", f"--junitxml={out / 'kernel_tests.xml'}"],
        "kernel_bench": [args.python, "plugins/packed_attention/bench_kernel.py", "--lib", str(library), "--json",
                         str(out / "kernel_bench.json"), "--head-dim", *map(str, args.head_dims), "--iters",
                         str(args.bench_iters), "--warmup", "5", *dry],
        "navit_varlen": [args.python, "scripts/navit_varlen_check.py", "--json", str(out / "navit_varlen.json"), *dry],
    }
    for name, cmd in commands.items():
        step = Step(name)
        steps.append(step)
        left = deadline - time.monotonic()
        if env_step.status != "ok":
            step.reason = f"environment step {env_step.status}"
        elif name == "build" and args.kernel_lib:
            step.status, step.reason = ("ok", f"prebuilt {library}") if library.is_file() else ("failed",
                                                                                               f"{library} not found")
        elif name != "build" and not library.is_file():
            step.reason = "no kernel library (build step failed)"
        elif left < MIN_STEP_SECONDS:
            step.reason = f"no time left in the {args.budget:.0f} s budget"
        else:
            run_step(step, cmd, out, min(STEP_BUDGETS[name], left), env)
        if name == "build" and step.status == "ok":
            step.details = {"library": str(library), "bytes": library.stat().st_size, "cuda_architectures": arch}
        if name == "kernel_tests" and step.status in ("ok", "failed"):
            judge_tests(step, junit_summary(out / "kernel_tests.xml"), args.dry_run)
        result = out / f"{name}.json"
        if name in ("kernel_bench", "navit_varlen") and step.status != "skipped" and result.is_file():
            step.details = load_json(result)
    report = {
        "format": REPORT_FORMAT, "dry_run": args.dry_run, "started_at": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t0, 2), "budget_s": args.budget, "arch": arch,
        "ok": all(s.status == "ok" for s in steps),
        "kernel": {"library": str(library) if library.is_file() else None,
                   "supported_head_dims": list(plugin_lib.SUPPORTED_HEAD_DIMS),
                   "head_dims": head_dim_report(library, args.head_dims)},
        "steps": [asdict(s) for s in steps],
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, allow_nan=False, default=str))
    for s in steps:
        print(f"{s.name:<13} {s.status:<8} {s.seconds:7.1f} s  {s.reason}")
    for d, text in report["kernel"]["head_dims"].items():
        print(f"head_dim {d:>4}: {text}")
    print(f"{'dry run' if args.dry_run else 'GPU check'} {'OK' if report['ok'] else 'FAILED'} in {report['wall_s']:.1f} s; "
          f"report {out / 'gpu_check.json'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
