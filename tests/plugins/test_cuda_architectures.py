"""The plugin's default CUDA architectures cover the GPUs deployments use (configure step only, no build).

CMake is configured (kernel only) without ``CMAKE_CUDA_ARCHITECTURES``; the test reads the cached default and the
``--generate-code`` flags CMake hands to nvcc, and checks them against the GPUs the project supports: SASS for
sm_80 (A100, A30), sm_86 (A10, A40, RTX 30), sm_87 (Jetson Orin), sm_89 (L4, L40S, RTX 40), sm_90 (H100, H200),
and PTX for the newest of them so that newer GPUs (Blackwell, Thor) JIT-compile it. Also checks that the plugin
README states the same default. Takes about 5 s (CMake's CUDA compiler detection).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from plugin_test_utils import PLUGIN_SRC, find_nvcc

SUPPORTED_GPUS_SASS = {80: "A100/A30", 86: "A10/A40/RTX 30", 87: "Jetson Orin", 89: "L4/L40S/RTX 40", 90: "H100/H200"}


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cmake = shutil.which("cmake")
    nvcc = find_nvcc()
    if cmake is None or nvcc is None:
        pytest.skip("cmake and nvcc are needed to configure the plugin build")
    build = tmp_path_factory.mktemp("cfg")
    proc = subprocess.run([cmake, "-S", str(PLUGIN_SRC), "-B", str(build), "-DNAVIT_KERNEL_ONLY=ON",
                           f"-DCMAKE_CUDA_COMPILER={nvcc}"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return build


def _cached_architectures(build: Path) -> str:
    m = re.search(r"^CMAKE_CUDA_ARCHITECTURES:\w+=(.*)$", (build / "CMakeCache.txt").read_text(), re.M)
    assert m, "CMAKE_CUDA_ARCHITECTURES not in the cache"
    return m.group(1)


def test_default_architectures_cover_the_supported_gpus(configured: Path) -> None:
    flags = (configured / "CMakeFiles" / "navit_packed_attention_kernel_objects.dir" / "flags.make").read_text()
    codes = re.findall(r"--generate-code=arch=compute_(\d+),code=\[([^\]]*)\]", flags)
    assert codes, f"no --generate-code flags in {flags}"
    sass = {int(c[3:]) for _, targets in codes for c in targets.split(",") if c.startswith("sm_")}
    ptx = {int(c[8:]) for _, targets in codes for c in targets.split(",") if c.startswith("compute_")}
    missing = {sm: gpu for sm, gpu in SUPPORTED_GPUS_SASS.items() if sm not in sass}
    assert not missing, f"no SASS for {missing} (default {_cached_architectures(configured)})"
    assert ptx and max(ptx) >= max(SUPPORTED_GPUS_SASS), f"no PTX for compute_{max(SUPPORTED_GPUS_SASS)} or newer"


def test_readme_states_the_default(configured: Path) -> None:
    readme = (PLUGIN_SRC / "README.md").read_text()
    assert f"default `{_cached_architectures(configured)}`" in readme
