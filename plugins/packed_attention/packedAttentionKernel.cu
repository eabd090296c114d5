/*
 * Host launcher of NavitPackedAttention: argument validation, kernel/tile selection, launch.
 * No TensorRT includes here (shared with the kernel-only library).
 */
#include "packedAttentionDevice.cuh"
#include "packedAttentionKernel.h"

#include <cmath>
#include <cstdint>
#include <mutex>
#include <set>
#include <utility>

namespace navit
{
namespace
{

using detail::KernelConfig;
using detail::PackedAttentionParams;

//! Raise the dynamic shared-memory limit of `kernel` on `device`, once per (kernel, device): later launches
//! (e.g. inside a CUDA graph capture, after TensorRT's warm-up enqueue) make no extra runtime calls.
bool ensureSmemLimit(KernelConfig const& config, int device)
{
    static std::mutex mutex;
    static std::set<std::pair<void const*, int>> done;
    void const* fn = reinterpret_cast<void const*>(config.kernel);
    std::lock_guard<std::mutex> lock(mutex);
    if (done.count({fn, device}) != 0)
    {
        return true;
    }
    if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, config.smemBytes) != cudaSuccess)
    {
        return false;
    }
    done.insert({fn, device});
    return true;
}

bool isAligned16(void const* ptr)
{
    return (reinterpret_cast<uintptr_t>(ptr) & 15U) == 0U;
}

} // namespace

char const* packedAttentionStatusString(int32_t status)
{
    switch (status)
    {
    case kPACKED_ATTENTION_OK: return "ok";
    case kPACKED_ATTENTION_INVALID_ARGUMENT:
        return "invalid argument (negative sizes, null pointers, numHeads <= 0 or non-finite scale)";
    case kPACKED_ATTENTION_UNSUPPORTED_HEAD_DIM: return "unsupported head_dim (supported: 32, 64, 128)";
    case kPACKED_ATTENTION_MISALIGNED: return "q/k/v/out must be 16-byte aligned";
    case kPACKED_ATTENTION_CUDA_ERROR: return "CUDA error while configuring or launching the kernel";
    case kPACKED_ATTENTION_NO_CONFIG: return "no kernel configuration fits this device's shared memory";
    case kPACKED_ATTENTION_BAD_ALGO: return "requested algorithm is not available for this dtype/device";
    default: return "unknown status";
    }
}

int launchPackedAttentionAlgo(void const* q, void const* k, void const* v, int32_t const* cuSeqlens, void* out,
    int32_t totalTokens, int32_t numSeqs, int32_t numHeads, int32_t headDim, float scale, bool isFp16,
    int32_t algo, cudaStream_t stream)
{
    if (totalTokens < 0 || numSeqs < 0 || numHeads <= 0 || numHeads > 65535 || !std::isfinite(scale))
    {
        return kPACKED_ATTENTION_INVALID_ARGUMENT;
    }
    if (!isSupportedHeadDim(headDim))
    {
        return kPACKED_ATTENTION_UNSUPPORTED_HEAD_DIM;
    }
    if (algo != kPACKED_ATTENTION_ALGO_AUTO && algo != kPACKED_ATTENTION_ALGO_SIMT
        && algo != kPACKED_ATTENTION_ALGO_TENSOR_CORE)
    {
        return kPACKED_ATTENTION_BAD_ALGO;
    }
    if (totalTokens == 0)
    {
        return kPACKED_ATTENTION_OK;
    }
    if (q == nullptr || k == nullptr || v == nullptr || cuSeqlens == nullptr || out == nullptr)
    {
        return kPACKED_ATTENTION_INVALID_ARGUMENT;
    }
    if (!isAligned16(q) || !isAligned16(k) || !isAligned16(v) || !isAligned16(out))
    {
        return kPACKED_ATTENTION_MISALIGNED;
    }

    int device = 0;
    int ccMajor = 0;
    int smemOptin = 0;
    if (cudaGetDevice(&device) != cudaSuccess
        || cudaDeviceGetAttribute(&ccMajor, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess
        || cudaDeviceGetAttribute(&smemOptin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    {
        return kPACKED_ATTENTION_CUDA_ERROR;
    }

    bool useTensorCores = isFp16 && ccMajor >= 7 && algo != kPACKED_ATTENTION_ALGO_SIMT;
    if (algo == kPACKED_ATTENTION_ALGO_TENSOR_CORE && !useTensorCores)
    {
        return kPACKED_ATTENTION_BAD_ALGO;
    }

    KernelConfig candidates[detail::kMaxCandidates];
    int numCandidates = 0;
    if (useTensorCores)
    {
        numCandidates = detail::wmmaCandidates(headDim, candidates);
    }
    else if (isFp16)
    {
        numCandidates = detail::simtCandidates<__half>(headDim, candidates);
    }
    else
    {
        numCandidates = detail::simtCandidates<float>(headDim, candidates);
    }
    KernelConfig const* chosen = nullptr;
    for (int i = 0; i < numCandidates; ++i)
    {
        if (candidates[i].smemBytes <= smemOptin || candidates[i].smemBytes <= 48 * 1024)
        {
            chosen = &candidates[i];
            break;
        }
    }
    if (chosen == nullptr)
    {
        return kPACKED_ATTENTION_NO_CONFIG;
    }

    int64_t const gridX = (static_cast<int64_t>(totalTokens) + chosen->blockM - 1) / chosen->blockM + numSeqs;
    if (gridX > INT32_MAX)
    {
        return kPACKED_ATTENTION_INVALID_ARGUMENT;
    }
    if (chosen->smemBytes > 48 * 1024 && !ensureSmemLimit(*chosen, device))
    {
        return kPACKED_ATTENTION_CUDA_ERROR;
    }

    PackedAttentionParams params;
    params.q = q;
    params.k = k;
    params.v = v;
    params.cuSeqlens = cuSeqlens;
    params.out = out;
    params.totalTokens = totalTokens;
    params.numSeqs = numSeqs;
    params.numHeads = numHeads;
    float const effectiveScale = scale == 0.F ? 1.F / std::sqrt(static_cast<float>(headDim)) : scale;
    params.scaleLog2 = effectiveScale * detail::kLog2e;

    dim3 const grid(static_cast<unsigned>(gridX), static_cast<unsigned>(numHeads), 1U);
    dim3 const block(static_cast<unsigned>(chosen->threads), 1U, 1U);
    chosen->kernel<<<grid, block, static_cast<size_t>(chosen->smemBytes), stream>>>(params);
    return cudaGetLastError() == cudaSuccess ? kPACKED_ATTENTION_OK : kPACKED_ATTENTION_CUDA_ERROR;
}

int launchPackedAttention(void const* q, void const* k, void const* v, int32_t const* cuSeqlens, void* out,
    int32_t totalTokens, int32_t numSeqs, int32_t numHeads, int32_t headDim, float scale, bool isFp16,
    cudaStream_t stream)
{
    return launchPackedAttentionAlgo(q, k, v, cuSeqlens, out, totalTokens, numSeqs, numHeads, headDim, scale,
        isFp16, kPACKED_ATTENTION_ALGO_AUTO, stream);
}

} // namespace navit
