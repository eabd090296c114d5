#!/usr/bin/env bash
# Compile check (and build) of the NavitPackedAttention TensorRT plugin against a TensorRT include directory.
# Needs only the TensorRT *headers*, nvcc and cmake; no TensorRT libraries and no GPU.
#
#   scripts/check_plugin_build.sh HEADERS_DIR [BUILD_DIR]   plugin libraries (plain + autoreg) + kernel library
#   scripts/check_plugin_build.sh --kernel-only [BUILD_DIR] kernel library only (no headers)
#
# HEADERS_DIR is the directory holding NvInfer.h (e.g. /usr/include/x86_64-linux-gnu, or the include/ of a
# TensorRT tarball). BUILD_DIR defaults to plugins/packed_attention/build, where
# navit_deploy.compile.plugin_lib.find_plugin_library() looks.
#
# Environment: CUDA_ARCHS (CMAKE_CUDA_ARCHITECTURES; unset: the CMakeLists.txt default, SASS for sm_80, 86, 87,
#              89, 90 plus compute_90 PTX for newer GPUs; e.g. "90" or "87" to build one architecture fast),
#              JOBS (default: nproc), CMAKE (default: cmake), NAVIT_CUDA_RUNTIME (Static|Shared, default Static).
# Warnings in our sources are errors (-DNAVIT_WERROR=ON). After the build it checks with nm that both plugin
# libraries (libnavit_packed_attention_plugin.so for IPluginRegistry::loadLibrary / trtexec --dynamicPlugins,
# libnavit_packed_attention_plugin_autoreg.so for loaders that only dlopen) export getCreators, setLoggerFinder
# and the C API, and that they need no TensorRT symbol at link/load time.
set -euo pipefail

usage() {
    awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
[[ "$1" == "-h" || "$1" == "--help" ]] && usage

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/plugins/packed_attention"
KERNEL_ONLY=0
HEADERS=""
if [[ "$1" == "--kernel-only" ]]; then
    KERNEL_ONLY=1
else
    HEADERS="$(cd "$1" 2>/dev/null && pwd)" || { echo "error: headers directory '$1' does not exist" >&2; exit 2; }
    if [[ ! -f "$HEADERS/NvInfer.h" ]]; then
        if [[ -f "$HEADERS/include/NvInfer.h" ]]; then
            HEADERS="$HEADERS/include"
        else
            echo "error: $HEADERS/NvInfer.h not found (pass the directory that contains NvInfer.h)" >&2
            exit 2
        fi
    fi
fi
BUILD="${2:-$SRC/build}"
CMAKE="${CMAKE:-cmake}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

command -v "$CMAKE" >/dev/null || { echo "error: cmake not found" >&2; exit 2; }
command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || { echo "error: nvcc not found" >&2; exit 2; }
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"

CONFIGURE=(-S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DNAVIT_WERROR=ON
           "-DNAVIT_CUDA_RUNTIME=${NAVIT_CUDA_RUNTIME:-Static}")
if [[ -n "${CUDA_ARCHS:-}" ]]; then
    CONFIGURE+=("-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS")
else
    CONFIGURE+=(-UCMAKE_CUDA_ARCHITECTURES)  # drop a value cached by an earlier run: the CMakeLists.txt default
fi
if [[ $KERNEL_ONLY -eq 1 ]]; then
    CONFIGURE+=(-DNAVIT_KERNEL_ONLY=ON)
    TARGETS=(navit_packed_attention_kernel)
else
    CONFIGURE+=(-DNAVIT_KERNEL_ONLY=OFF -DNAVIT_REQUIRE_TENSORRT=ON "-DTENSORRT_INCLUDE_DIR=$HEADERS")
    TARGETS=(navit_packed_attention_kernel navit_packed_attention_plugin navit_packed_attention_plugin_autoreg)
fi

echo "== configure ($BUILD)"
"$CMAKE" "${CONFIGURE[@]}"
echo "== build (${TARGETS[*]})"
for t in "${TARGETS[@]}"; do
    "$CMAKE" --build "$BUILD" --target "$t" -j "$JOBS"
done

fail=0
check_exported() { # lib symbol
    if nm -D --defined-only "$1" | awk '$2 == "T" {print $3}' | grep -qx "$2"; then
        echo "ok: $(basename "$1") exports $2"
    else
        echo "FAIL: $(basename "$1") does not export $2" >&2
        fail=1
    fi
}

KLIB="$BUILD/libnavit_packed_attention_kernel.so"
check_exported "$KLIB" navitPackedAttentionLaunch
check_exported "$KLIB" navitPackedAttentionLaunchAlgo

ARCHS="$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$BUILD/CMakeCache.txt")"
# The device code in the kernel library must be what was asked for: SASS (ELF) for "NN" and "NN-real", PTX for
# "NN" and "NN-virtual". Needs cuobjdump (part of the full CUDA toolkit).
CUOBJDUMP="$(command -v cuobjdump || true)"
[[ -z "$CUOBJDUMP" && -x "$(dirname "$(command -v nvcc)")/cuobjdump" ]] && CUOBJDUMP="$(dirname "$(command -v nvcc)")/cuobjdump"
if [[ -z "$CUOBJDUMP" ]]; then
    echo "note: cuobjdump not found; the SASS/PTX architectures in the library are not checked"
else
    elfs="$("$CUOBJDUMP" --list-elf "$KLIB" 2>/dev/null || true)"
    ptxs="$("$CUOBJDUMP" --list-ptx "$KLIB" 2>/dev/null || true)"
    for a in ${ARCHS//;/ }; do
        num="${a%%-*}"
        [[ "$num" =~ ^[0-9]+[a-z]?$ ]] || { echo "note: architecture '$a' not checked"; continue; }
        if [[ "$a" != *-virtual ]] && ! grep -q "sm_${num}\.cubin" <<<"$elfs"; then
            echo "FAIL: $(basename "$KLIB") has no SASS for sm_${num}" >&2
            fail=1
        fi
        if [[ "$a" != *-real ]] && ! grep -q "sm_${num}\.ptx" <<<"$ptxs"; then
            echo "FAIL: $(basename "$KLIB") has no PTX for compute_${num}" >&2
            fail=1
        fi
    done
    if [[ $fail -eq 0 ]]; then echo "ok: device code for ${ARCHS}"; fi
fi

if [[ $KERNEL_ONLY -eq 0 ]]; then
    for PLIB in "$BUILD/libnavit_packed_attention_plugin.so" "$BUILD/libnavit_packed_attention_plugin_autoreg.so"; do
        for s in getCreators setLoggerFinder navitPackedAttentionLaunch; do
            check_exported "$PLIB" "$s"
        done
        # No TensorRT symbol may be needed at load time (registry and logger are found with dlsym).
        if nm -D --undefined-only "$PLIB" | grep -E 'nvinfer1|getPluginRegistry|getLogger|createInfer|getInferLib'; then
            echo "FAIL: $(basename "$PLIB") has undefined TensorRT symbols (listed above)" >&2
            fail=1
        else
            echo "ok: $(basename "$PLIB") has no undefined TensorRT symbols"
        fi
        if ldd "$PLIB" 2>/dev/null | grep -q nvinfer; then
            echo "FAIL: $(basename "$PLIB") links a TensorRT library" >&2
            fail=1
        fi
    done
    ver="$(grep -hE '^#define (TRT|NV_TENSORRT)_(MAJOR|MINOR|PATCH)(_ENTERPRISE)? +[0-9]+' "$HEADERS/NvInferVersion.h" \
           | awk '{print $3}' | paste -sd. -)"
    echo "TensorRT headers: $HEADERS (version ${ver:-unknown})"
fi
echo "nvcc: $(nvcc --version | grep -o 'release [0-9.]*, V[0-9.]*')"
echo "CUDA architectures: $ARCHS"
if [[ $fail -ne 0 ]]; then
    echo "check_plugin_build: FAILED" >&2
    exit 1
fi
echo "check_plugin_build: OK ($BUILD)"
