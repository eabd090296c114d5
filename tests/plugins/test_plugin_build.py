"""Compile check of the TensorRT plugin against real TensorRT headers, and a CPU test of its registration.

Runs when ``$NAVIT_TRT_HEADERS`` names one or more TensorRT include directories (separated by ``:``), e.g.
the ``include/`` of a TensorRT 10.x and an 11.x release; skips otherwise. No TensorRT library, no GPU:

* ``scripts/check_plugin_build.sh`` builds the plugin (single arch sm_90 to stay fast) with warnings as
  errors and checks the exported symbols;
* ``tests/plugins/mock/plugin_host_mock.cpp`` plays a TensorRT process (mock IPluginRegistry/ILogger found
  by the plugin via dlsym) and checks, for both plugin libraries, which registration each makes when dlopened
  or loaded with loadLibrary (in both orders, and the two libraries in one process), that the plain library
  makes no registry call while loadLibrary runs (``--strict``), the opt-out variable, the major-version guard,
  and the plugin's build/runtime methods and error reporting.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_test_utils import REPO_ROOT, find_cuda_include, find_nvcc

from navit_deploy.compile import plugin_lib

HEADERS_ENV = "NAVIT_TRT_HEADERS"
CHECK_SCRIPT = REPO_ROOT / "scripts" / "check_plugin_build.sh"
MOCK_SRC = Path(__file__).resolve().parent / "mock" / "plugin_host_mock.cpp"


def _header_dirs() -> list[str]:
    return [p for p in os.environ.get(HEADERS_ENV, "").split(os.pathsep) if p]


HEADER_DIRS = _header_dirs()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not HEADER_DIRS, reason=f"${HEADERS_ENV} is not set (point it at a TensorRT include directory with NvInfer.h)"
    ),
]


PLAIN = plugin_lib.PLUGIN_LIBRARY_NAME
AUTOREG = plugin_lib.AUTOREG_PLUGIN_LIBRARY_NAME


@pytest.fixture(scope="module", params=HEADER_DIRS or ["<unset>"])
def plugin_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(headers dir, build dir holding both plugin libraries) for each header dir in $NAVIT_TRT_HEADERS."""
    headers = Path(request.param)
    if find_nvcc() is None or shutil.which("cmake") is None:
        pytest.skip("nvcc and cmake are needed to build the plugin")
    build = tmp_path_factory.mktemp("plugin_build")
    env = {**os.environ, "CUDA_ARCHS": "90"}
    proc = subprocess.run(
        ["bash", str(CHECK_SCRIPT), str(headers), str(build)], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, f"check_plugin_build.sh failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    assert "check_plugin_build: OK" in proc.stdout
    assert (build / PLAIN).is_file() and (build / AUTOREG).is_file()
    return headers, build


@pytest.mark.parametrize("name", [PLAIN, AUTOREG])
def test_check_script_builds_plugin(plugin_build: tuple[Path, Path], name: str) -> None:
    _, build = plugin_build
    out = subprocess.run(["nm", "-D", "--defined-only", str(build / name)], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if " T " in line}
    assert {"getCreators", "setLoggerFinder", "navitPackedAttentionLaunch"} <= exported


@pytest.fixture(scope="module")
def mock_host(plugin_build: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    headers, _ = plugin_build
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    cuda_include = find_cuda_include()
    if cuda_include is None:
        pytest.skip("cuda_runtime_api.h not found (set CUDA_HOME)")
    exe = tmp_path_factory.mktemp("mock") / "plugin_host_mock"
    cmd = [
        compiler,
        "-std=c++17",
        "-O1",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-deprecated-declarations",
        "-rdynamic",
        "-isystem",
        str(headers),
        "-isystem",
        str(cuda_include),
        str(MOCK_SRC),
        "-o",
        str(exe),
        "-ldl",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"mock host did not compile:\n{proc.stderr[-6000:]}"
    return exe


# (libraries, mode, --strict, extra environment). --strict: the mock refuses and counts registry calls made while
# loadLibrary runs, as a TensorRT holding its registry lock would; the plain library must pass it.
REGISTRATION_CASES = {
    "plain-dlopen-registers-nothing": ([PLAIN], "dlopen-silent", False, {}),
    "plain-loadlibrary": ([PLAIN], "loadlibrary", True, {}),
    "plain-dlopen-then-loadlibrary": ([PLAIN], "dlopen-then-load", True, {}),
    "plain-loadlibrary-then-dlopen": ([PLAIN], "load-then-dlopen", True, {}),
    "autoreg-dlopen-registers": ([AUTOREG], "dlopen-registers", False, {}),
    "autoreg-plugin-via-getLogger": ([AUTOREG], "plugin", False, {}),
    "autoreg-loadlibrary-hands-over": ([AUTOREG], "loadlibrary", False, {}),
    "autoreg-dlopen-then-loadlibrary": ([AUTOREG], "dlopen-then-load", False, {}),
    "autoreg-loadlibrary-then-dlopen": ([AUTOREG], "load-then-dlopen", False, {}),
    "autoreg-opt-out": ([AUTOREG], "dlopen-silent", False, {"NAVIT_PLUGIN_NO_STATIC_REGISTRATION": "1"}),
    "autoreg-other-major": ([AUTOREG], "dlopen-silent", False, {"MOCK_TRT_MAJOR": "9"}),
    "autoreg-then-plain": ([AUTOREG, PLAIN], "autoreg-then-plain", False, {}),
    "plain-then-autoreg": ([PLAIN, AUTOREG], "plain-then-autoreg", True, {}),
}


@pytest.mark.parametrize("case", list(REGISTRATION_CASES))
def test_registration_and_plugin_with_mock_tensorrt(
    case: str, mock_host: Path, plugin_build: tuple[Path, Path]
) -> None:
    libs, mode, strict, extra_env = REGISTRATION_CASES[case]
    _, build = plugin_build
    env = {k: v for k, v in os.environ.items() if k not in ("NAVIT_PLUGIN_NO_STATIC_REGISTRATION", "MOCK_TRT_MAJOR")}
    env.update(extra_env)
    cmd = [str(mock_host), *(["--strict"] if strict else []), mode, *(str(build / lib) for lib in libs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


@pytest.mark.parametrize("name", [PLAIN, AUTOREG])
def test_plugin_loads_without_tensorrt(plugin_build: tuple[Path, Path], name: str) -> None:
    """dlopen in a process without TensorRT: nothing to register, no unresolved symbol, C API usable."""
    _, build = plugin_build
    lib = build / name
    code = (
        "import ctypes, sys; sys.path.insert(0, sys.argv[2]);"
        "from navit_deploy.compile import plugin_lib;"
        "l = plugin_lib.load_kernel_library(sys.argv[1]);"
        "assert l.navitPackedAttentionLaunch(None, None, None, None, None, 0, 0, 1, 64, 0.0, False, None) == 0;"
        "print('OK')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(lib), str(REPO_ROOT)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stdout + proc.stderr
