"""CPU emulation of the NavitPackedAttention CUDA kernels (runs without a GPU).

``emu/emu_runner.cpp`` compiles the real device code (``plugins/packed_attention/*.cuh``) with g++ against a
small emulation of the CUDA built-ins (``emu/cuda_emu.h``, ``emu/wmma_emu.h``): threads are fibers switched
at barriers/shuffles, resumed in forward, reverse or shuffled order; shared memory and the output start as
NaN. Every tile configuration of both kernel families is checked against a float64 numpy reference on packs
with one-token images, empty images, images spanning several tiles, many images (multi-step segment scan)
and padding. This validates indexing, masking, online softmax, the work decomposition and barrier placement;
it does not measure GPU-specific behaviour (timing, real WMMA layouts, memory model), which the GPU tests do.
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from plugin_test_utils import EMU_DIR, PLUGIN_SRC, cu_seqlens, reference_attention_np

SIMT, WMMA = 1, 2


def _variants() -> list[tuple[int, bool, int, int]]:
    """(head_dim, fp16, algo, config index) for every configuration of the launcher's tables."""
    counts = {  # must match simtCandidates / wmmaCandidates in packedAttentionDevice.cuh (checked below)
        (SIMT, 32): 1,
        (SIMT, 64): 2,
        (SIMT, 128): 2,
        (WMMA, 32): 1,
        (WMMA, 64): 2,
        (WMMA, 128): 3,
    }
    out = []
    for (algo, d), n in counts.items():
        for fp16 in (False, True) if algo == SIMT else (True,):
            out.extend((d, fp16, algo, c) for c in range(n))
    return out


VARIANTS = _variants()
PACKS = {
    # name: (image token counts, padding tokens, heads)
    "mixed": ([1, 70, 5, 0, 33, 64, 1], 3, 2),
    "many_images": ([int(x) for x in np.random.default_rng(7).integers(0, 10, size=45)], 150, 1),
    "only_padding": ([], 20, 2),
}


def _run(
    emu: ctypes.CDLL,
    lengths: list[int],
    pad: int,
    heads: int,
    head_dim: int,
    fp16: bool,
    algo: int,
    config: int,
    order: int,
    scale: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cu = cu_seqlens(lengths)
    total = int(cu[-1]) + pad
    dtype = np.float16 if fp16 else np.float32
    q, k, v = (rng.standard_normal((total, heads * head_dim)).astype(dtype) for _ in range(3))
    out = np.full((total, heads * head_dim), np.nan, dtype=dtype)
    rc = emu.navitEmuRun(
        q.ctypes.data,
        k.ctypes.data,
        v.ctypes.data,
        cu.ctypes.data,
        out.ctypes.data,
        total,
        len(lengths),
        heads,
        head_dim,
        scale,
        int(fp16),
        algo,
        config,
        order,
    )
    assert rc == 0
    return out.astype(np.float64), reference_attention_np(q, k, v, cu, heads, head_dim, scale)


def test_config_tables_are_covered(emu: ctypes.CDLL) -> None:
    for d in (32, 64, 128):
        assert emu.navitEmuNumConfigs(SIMT, 0, d) == sum(1 for v in VARIANTS if v[:3] == (d, False, SIMT))
        assert emu.navitEmuNumConfigs(WMMA, 1, d) == sum(1 for v in VARIANTS if v[:3] == (d, True, WMMA))
    assert emu.navitEmuNumConfigs(SIMT, 0, 48) == 0


@pytest.mark.parametrize("pack", list(PACKS))
@pytest.mark.parametrize(
    "head_dim,fp16,algo,config",
    VARIANTS,
    ids=[f"d{d}-{'fp16' if h else 'fp32'}-{'wmma' if a == WMMA else 'simt'}-cfg{c}" for d, h, a, c in VARIANTS],
)
def test_emulated_kernel_matches_reference(
    emu: ctypes.CDLL, pack: str, head_dim: int, fp16: bool, algo: int, config: int
) -> None:
    lengths, pad, heads = PACKS[pack]
    for order in (0, 1, 11):  # forward, reverse and shuffled thread order
        out, ref = _run(emu, lengths, pad, heads, head_dim, fp16, algo, config, order)
        assert not np.isnan(out).any(), f"unwritten outputs (order {order})"
        tol = 1e-5 if not fp16 else 2e-3
        np.testing.assert_allclose(out, ref, atol=tol, rtol=tol, err_msg=f"thread order {order}")
        assert not out[int(cu_seqlens(lengths)[-1]) :].any(), "padding must be zero"


@pytest.mark.parametrize("algo,fp16", [(SIMT, False), (WMMA, True)])
def test_emulated_long_image_and_scale(emu: ctypes.CDLL, algo: int, fp16: bool) -> None:
    """An image of several key tiles with an explicit scale (the online softmax rescaling path)."""
    out, ref = _run(emu, [200], 0, 1, 64, fp16, algo, 0, 0, scale=0.5, seed=3)
    tol = 1e-5 if not fp16 else 2e-3
    np.testing.assert_allclose(out, ref, atol=tol, rtol=tol)


@pytest.mark.slow
def test_emulated_kernels_are_memory_safe_under_asan(tmp_path: Path) -> None:
    """AddressSanitizer + UBSan over all configurations, with exact-size heap buffers and invalid cu_seqlens
    (decreasing, negative, beyond the token count, empty): the kernels must never read or write outside."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ not found")
    exe = tmp_path / "emu_asan"
    cmd = [
        compiler,
        "-std=c++20",
        "-O1",
        "-g",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined",
        "-fno-strict-aliasing",
        f"-I{EMU_DIR}",
        f"-I{PLUGIN_SRC}",
        str(EMU_DIR / "emu_runner.cpp"),
        str(EMU_DIR / "emu_asan_main.cpp"),
        "-o",
        str(exe),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot build with sanitizers here: {proc.stderr[-2000:]}")
    env = {"ASAN_OPTIONS": "detect_leaks=0", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, check=False, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), (run.stdout + run.stderr)[-6000:]


def work_items(emu: ctypes.CDLL, lengths: list[int], pad: int, block_m: int) -> tuple[np.ndarray, np.ndarray]:
    """What every block's work-item lookup returns ([grid, 4]: found, segStart, segEnd, qStart) and how many
    warp-wide operations (shuffles, ballots) it took ([grid])."""
    cu = cu_seqlens(lengths)
    total = int(cu[-1]) + pad
    grid = -(-total // block_m) + len(lengths)
    items = np.zeros((grid, 4), dtype=np.int32)
    ops = np.zeros(grid, dtype=np.int64)
    assert emu.navitEmuFindWorkItems(cu.ctypes.data, len(lengths), total, block_m, items.ctypes.data,
                                     ops.ctypes.data) == grid
    return items, ops


LOOKUP_PACKS = {
    # name: (image token counts, padding tokens)
    "mixed": ([1, 70, 5, 0, 33, 64, 1, 129, 0, 0, 2], 3),
    "many_small": ([int(x) for x in np.random.default_rng(3).integers(0, 40, size=700)], 100),
    "one_token_4096": ([1] * 4096, 0),
    "only_padding": ([], 77),
}


@pytest.mark.parametrize("block_m", [32, 64])
@pytest.mark.parametrize("pack", list(LOOKUP_PACKS))
def test_work_items_cover_every_tile_once(emu: ctypes.CDLL, pack: str, block_m: int) -> None:
    """Every (image, query tile) is computed by exactly one block, with its image's bounds; no other block
    computes anything (the rest zero padding or idle)."""
    lengths, pad = LOOKUP_PACKS[pack]
    cu = cu_seqlens(lengths)
    items, _ = work_items(emu, lengths, pad, block_m)
    got = sorted((int(s), int(e), int(q)) for f, s, e, q in items if f)
    want = sorted((int(cu[b]), int(cu[b + 1]), int(cu[b]) + j * block_m)
                  for b in range(len(lengths)) for j in range(-(-lengths[b] // block_m)))
    assert got == want



def test_work_item_lookup_is_logarithmic_in_the_images(emu: ctypes.CDLL) -> None:
    """The lookup of a block costs O(log_32 B) warp operations, not a scan of cu_seqlens (O(B / 32) per block,
    O(B^2 / 32) per launch): 4096 one-token images need at most ceil(log_32(4097)) + 1 = 4 per block."""
    images = 4096
    _, ops = work_items(emu, [1] * images, 0, 64)
    bound = math.ceil(math.log(images + 1, 32)) + 1
    assert ops.max() <= bound, f"a block took {ops.max()} warp operations (mean {ops.mean():.1f}); bound {bound}"
