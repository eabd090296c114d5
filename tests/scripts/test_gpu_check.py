"""scripts/gpu_check.sh: the dry run end to end (real nvcc build, every step's no-GPU path), and the orchestrator's
step handling (timeouts, test verdicts) on its own.

The dry run needs nvcc and cmake (it compiles the kernel library for sm_90, about 20 s of its ~35 s) and skips
with the reason where they are missing. Nothing here needs a GPU; on a machine with one, the non-dry-run refusal
test is skipped because the check would really run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from navit_deploy.compile import plugin_lib

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["environment", "build", "kernel_tests", "kernel_bench", "navit_varlen"]


def _load_orchestrator():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


gpu_check = _load_orchestrator()


def _run(out: Path, *extra: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(["bash", str(SCRIPT), "--python", sys.executable, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout, check=False)
    report = json.loads((out / "gpu_check.json").read_text())
    return proc, report


def _torch_has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.skipif(plugin_lib.find_nvcc() is None or shutil.which("cmake") is None,
                    reason="the dry run compiles the kernel with nvcc through cmake; one of them is missing here")
def test_dry_run_end_to_end(tmp_path: Path) -> None:
    start = time.monotonic()
    proc, report = _run(tmp_path, "--dry-run")
    assert proc.returncode == 0 and report["ok"], proc.stdout + proc.stderr
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS and all(s["status"] == "ok" for s in steps.values())
    assert report["dry_run"] and report["wall_s"] <= time.monotonic() - start

    library = Path(report["kernel"]["library"])  # really built by nvcc, a loadable C API
    assert library.is_file() and steps["build"]["details"]["cuda_architectures"] == "90"
    plugin_lib.load_kernel_library(library)
    assert report["kernel"]["head_dims"]["64"] == report["kernel"]["head_dims"]["128"] == "supported"
    assert report["kernel"]["head_dims"]["72"].startswith("unsupported: no kernel for head_dim 72")

    tests = steps["kernel_tests"]["details"]  # the CPU part ran, the GPU part was collected and skipped
    assert tests["passed"] >= 2 and tests["failed"] == tests["errors"] == 0 and tests["skipped"] > 60
    assert all("no CUDA GPU available" in reason for reason in tests["skip_reasons"])

    bench = steps["kernel_bench"]["details"]
    assert bench["dry_run"] and bench["rows"] == [] and bench["head_dims"]["72"].startswith("unsupported")

    navit = steps["navit_varlen"]["details"]
    (row,) = navit["rows"]
    assert row["ok"] and row["segment_vs_dense"]["max_abs_embedding"] < 1e-4
    assert "CUDA" in navit["varlen_not_run"]
    for name in STEPS[1:]:
        assert Path(steps[name]["log"]).is_file()


@pytest.mark.skipif(_torch_has_cuda(), reason="a CUDA GPU is present: without --dry-run the check would really run")
def test_without_a_gpu_the_check_refuses_and_says_to_dry_run(tmp_path: Path) -> None:
    proc, report = _run(tmp_path, timeout=120)
    assert proc.returncode == 1 and not report["ok"]
    env, *rest = report["steps"]
    assert env["status"] == "failed" and "no CUDA GPU available" in env["reason"] and "--dry-run" in env["reason"]
    assert [s["status"] for s in rest] == ["skipped"] * 4 and all("environment" in s["reason"] for s in rest)


def test_a_step_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    step = gpu_check.run_step(gpu_check.Step("sleepy"), [sys.executable, "-c", code], tmp_path, timeout=2)
    assert step.status == "timeout" and "killed after 2 s" in step.reason and step.seconds < 30
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the kill is asynchronous; the process disappears once reaped by init
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {grandchild} of the timed-out step is still running")


def test_a_failing_step_reports_its_exit_status_and_last_lines(tmp_path: Path) -> None:
    step = gpu_check.run_step(gpu_check.Step("bad"), [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                              tmp_path, timeout=30)
    assert step.status == "failed" and step.returncode == 3 and "boom" in step.reason


@pytest.mark.parametrize("summary, dry_run, status", [
    ({"passed": 2, "failed": 0, "errors": 0, "skipped": 5, "skip_reasons": {"no CUDA GPU available (x)": 5}}, True, "ok"),
    ({"passed": 70, "failed": 0, "errors": 0, "skipped": 0, "skip_reasons": {}}, False, "ok"),
    ({"passed": 2, "failed": 0, "errors": 0, "skipped": 5, "skip_reasons": {"no CUDA GPU available (x)": 5}}, False,
     "failed"),  # on a GPU machine nothing may skip
    ({"passed": 2, "failed": 0, "errors": 0, "skipped": 1, "skip_reasons": {"nvcc not found": 1}}, True, "failed"),
    ({"passed": 69, "failed": 1, "errors": 0, "skipped": 0, "skip_reasons": {}}, False, "failed"),
    ({"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "skip_reasons": {}}, True, "failed"),  # nothing ran
])
def test_kernel_test_verdict(summary: dict, dry_run: bool, status: str) -> None:
    step = gpu_check.Step("kernel_tests", status="ok")
    gpu_check.judge_tests(step, {**summary, "failures": []}, dry_run)
    assert step.status == status
