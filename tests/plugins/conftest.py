"""Fixtures of the NavitPackedAttention plugin tests."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plugin_test_utils import EMU_DIR, PLUGIN_SRC, compile_kernel_library, find_nvcc

from navit_deploy.compile.plugin_lib import KERNEL_LIB_ENV, find_kernel_library


@pytest.fixture(scope="session")
def cpu_kernel_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kernel library compiled for sm_90 with nvcc (compile check; loadable without a GPU: static cudart), or
    ``$NAVIT_KERNEL_LIB`` when set (the GPU check passes the library it has just built)."""
    explicit = os.environ.get(KERNEL_LIB_ENV)
    if explicit:
        return find_kernel_library(explicit)
    if find_nvcc() is None:
        pytest.skip("nvcc not found (install the CUDA toolkit or put nvcc on PATH)")
    return compile_kernel_library(tmp_path_factory.mktemp("kernel_sm90"), "sm_90")


@pytest.fixture(scope="session")
def emu(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The kernels' device code and the launcher's host code built for the CPU emulation (emu/emu_runner.cpp)."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ not found")
    lib = tmp_path_factory.mktemp("emu") / "libnavit_attention_emu.so"
    cmd = [
        compiler,
        "-std=c++20",
        "-O2",
        "-fPIC",
        "-shared",
        "-fno-strict-aliasing",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{EMU_DIR}",
        f"-I{PLUGIN_SRC}",
        str(EMU_DIR / "emu_runner.cpp"),
        "-o",
        str(lib),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 and "_Float16" in proc.stderr:
        pytest.skip("this g++ has no _Float16 support")
    assert proc.returncode == 0, proc.stderr[-6000:]
    emu = ctypes.CDLL(str(lib))
    i32 = ctypes.c_int32
    emu.navitEmuRun.argtypes = [ctypes.c_void_p] * 5 + [i32] * 4 + [ctypes.c_float] + [i32] * 4
    emu.navitEmuRun.restype = i32
    emu.navitEmuNumConfigs.argtypes = [i32, i32, i32]
    emu.navitEmuNumConfigs.restype = i32
    emu.navitEmuFindWorkItems.argtypes = [ctypes.c_void_p, i32, i32, i32, ctypes.c_void_p, ctypes.c_void_p]
    emu.navitEmuFindWorkItems.restype = i32
    emu.navitEmuLaunch.argtypes = [ctypes.c_void_p] * 5 + [i32] * 4 + [ctypes.c_float] + [i32] * 2 + [ctypes.c_void_p]
    emu.navitEmuLaunch.restype = i32
    emu.navitEmuFakeSetDevice.argtypes = [i32, i32, i32]
    emu.navitEmuFakeSetContext.argtypes = [ctypes.c_int64, i32]
    emu.navitEmuFakeCalls.argtypes = [ctypes.c_void_p]
    return emu
