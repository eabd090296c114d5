"""The launcher's host code (``packedAttentionLaunch.h``) on a fake CUDA runtime, then its grid in the emulation.

``navitEmuLaunch`` runs exactly the launcher's planning code (argument checks, device limits, configuration
choice, the shared-memory attribute) against a fake runtime that counts every call and, like the real one,
fails a launch needing more than 48 KiB of shared memory unless the kernel's limit was raised *in the current
context*; then the planned grid runs in the CPU emulation and is compared with a float64 reference. Checked: how
many runtime calls a launch makes once warm, that a new CUDA context gets the attribute raised again, the
fallback when no context ID is available, the configuration choice on a device with 48 KiB, and that invalid
arguments are refused before any runtime call.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from plugin_test_utils import cu_seqlens, reference_attention_np

from navit_deploy.compile.plugin_lib import (ALGO_AUTO, ALGO_TENSOR_CORE, STATUS_BAD_ALGO, STATUS_INVALID_ARGUMENT,
                                             STATUS_OK, STATUS_UNSUPPORTED_HEAD_DIM)

H100_SMEM_OPTIN = 232448  # cudaDevAttrMaxSharedMemoryPerBlockOptin of sm_90 (227 KiB)
DEFAULT_SMEM = 48 * 1024
CALLS = ("current_device", "device_limits", "context_id", "set_smem_attribute")


class FakeGpu:
    """A device of the emulator's fake runtime; ``launch`` makes it current and returns (status, output,
    float64 reference, the chosen configuration's shared memory)."""

    def __init__(self, emu: ctypes.CDLL, device: int, cc_major: int = 9, smem_optin: int = H100_SMEM_OPTIN) -> None:
        self.emu, self.device, self.limits = emu, device, (cc_major, smem_optin)

    def calls(self) -> dict[str, int]:
        out = np.zeros(4, dtype=np.int64)
        self.emu.navitEmuFakeCalls(out.ctypes.data)
        return dict(zip(CALLS, out.tolist()))

    def context(self, context: int, id_known: bool = True) -> None:
        self.emu.navitEmuFakeSetContext(context, int(id_known))

    def launch(self, lengths: list[int], pad: int = 0, head_dim: int = 64, fp16: bool = False, heads: int = 2,
               algo: int = ALGO_AUTO) -> tuple[int, np.ndarray, np.ndarray | None, int]:
        self.emu.navitEmuFakeSetDevice(self.device, *self.limits)
        rng = np.random.default_rng(len(lengths))
        cu = cu_seqlens(lengths)
        total = int(cu[-1]) + pad
        dtype = np.float16 if fp16 else np.float32
        q, k, v = (rng.standard_normal((total, max(heads, 1) * head_dim)).astype(dtype) for _ in range(3))
        out = np.full_like(q, np.nan)
        smem = ctypes.c_int32(-1)
        status = self.emu.navitEmuLaunch(q.ctypes.data, k.ctypes.data, v.ctypes.data, cu.ctypes.data, out.ctypes.data,
                                         total, len(lengths), heads, head_dim, 0.0, int(fp16), algo, ctypes.byref(smem))
        ref = reference_attention_np(q, k, v, cu, heads, head_dim, 0.0) if status == STATUS_OK and heads else None
        return status, out.astype(np.float64), ref, smem.value


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in CALLS}


def _check(result: tuple[int, np.ndarray, np.ndarray | None, int], fp16: bool = False) -> int:
    status, out, ref, smem = result
    assert status == STATUS_OK
    tol = 2e-3 if fp16 else 1e-5
    np.testing.assert_allclose(out, ref, atol=tol, rtol=tol)
    return smem


def test_warm_launch_makes_one_runtime_call_and_raises_smem_once_per_context(emu: ctypes.CDLL) -> None:
    gpu = FakeGpu(emu, device=0)
    gpu.context(101)
    before = gpu.calls()
    assert _check(gpu.launch([5, 70, 1])) > DEFAULT_SMEM  # the fp32 d64 kernel wants 68 KiB
    first = _delta(before, gpu.calls())
    assert first == {"current_device": 1, "device_limits": 1, "context_id": 1, "set_smem_attribute": 1}

    before = gpu.calls()
    _check(gpu.launch([33, 2]))
    assert _delta(before, gpu.calls()) == {"current_device": 1, "device_limits": 0, "context_id": 1,
                                           "set_smem_attribute": 0}

    gpu.context(202)  # a new context (cudaDeviceReset, a driver-API context): the attribute starts at 48 KiB again
    before = gpu.calls()
    _check(gpu.launch([9, 9]))
    assert _delta(before, gpu.calls())["set_smem_attribute"] == 1
    gpu.context(101)
    before = gpu.calls()
    _check(gpu.launch([9, 9]))
    assert _delta(before, gpu.calls())["set_smem_attribute"] == 0


def test_without_a_context_id_the_attribute_is_set_on_every_launch(emu: ctypes.CDLL) -> None:
    gpu = FakeGpu(emu, device=1)
    gpu.context(303, id_known=False)
    before = gpu.calls()
    for _ in range(2):
        _check(gpu.launch([17, 4]))
    assert _delta(before, gpu.calls())["set_smem_attribute"] == 2


def test_device_with_48_kib_gets_a_configuration_that_fits(emu: ctypes.CDLL) -> None:
    gpu = FakeGpu(emu, device=2, cc_major=7, smem_optin=DEFAULT_SMEM)
    gpu.context(404)
    before = gpu.calls()
    assert _check(gpu.launch([40, 1, 77], pad=3)) <= DEFAULT_SMEM
    assert _check(gpu.launch([40, 1, 77], fp16=True), fp16=True) <= DEFAULT_SMEM
    assert _delta(before, gpu.calls())["set_smem_attribute"] == 0


def test_tensor_cores_need_sm70(emu: ctypes.CDLL) -> None:
    gpu = FakeGpu(emu, device=3, cc_major=6, smem_optin=DEFAULT_SMEM)
    gpu.context(505)
    assert gpu.launch([8], fp16=True, algo=ALGO_TENSOR_CORE)[0] == STATUS_BAD_ALGO
    _check(gpu.launch([8, 3], fp16=True), fp16=True)  # auto: the SIMT kernel


@pytest.mark.parametrize("kwargs, status", [
    ({"head_dim": 72}, STATUS_UNSUPPORTED_HEAD_DIM),
    ({"heads": 0}, STATUS_INVALID_ARGUMENT),
    ({"algo": 9}, STATUS_BAD_ALGO),
])
def test_invalid_arguments_are_refused_before_any_runtime_call(emu: ctypes.CDLL, kwargs: dict, status: int) -> None:
    gpu = FakeGpu(emu, device=4)
    before = gpu.calls()
    assert gpu.launch([3, 4], **kwargs)[0] == status
    assert _delta(before, gpu.calls()) == dict.fromkeys(CALLS, 0)


def test_empty_pack_launches_nothing(emu: ctypes.CDLL) -> None:
    gpu = FakeGpu(emu, device=5)
    before = gpu.calls()
    status, _, _, smem = gpu.launch([], pad=0)
    assert status == STATUS_OK and smem == 0
    assert _delta(before, gpu.calls()) == dict.fromkeys(CALLS, 0)
