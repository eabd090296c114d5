/*
 * Host launcher of NavitPackedAttention: the CUDA runtime behind packedAttentionLaunch.h, and the launch.
 * No TensorRT includes here (shared with the kernel-only library).
 */
#include "packedAttentionKernel.h"
#include "packedAttentionLaunch.h"

#include <cuda.h> // driver API types only (CUcontext, CUresult): the functions are looked up at run time

#include <cstdint>

namespace navit
{
namespace
{

using CtxGetCurrentFn = CUresult (*)(CUcontext*);
using CtxGetIdFn = CUresult (*)(CUcontext, unsigned long long*);

//! cuCtxGetCurrent and cuCtxGetId from the driver the CUDA runtime loaded (no link against libcuda).
struct DriverContextApi
{
    CtxGetCurrentFn getCurrent{nullptr};
    CtxGetIdFn getId{nullptr};
};

template <typename Fn>
Fn driverEntryPoint(char const* name)
{
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    cudaError_t const err = cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found);
#elif CUDART_VERSION >= 12000
    cudaError_t const err = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &found);
#else
    cudaError_t const err = cudaErrorNotSupported; // cuCtxGetId needs CUDA 12
#endif
    return err == cudaSuccess && found == cudaDriverEntryPointSuccess ? reinterpret_cast<Fn>(fn) : nullptr;
}

DriverContextApi const& driverContextApi()
{
    static DriverContextApi const api{
        driverEntryPoint<CtxGetCurrentFn>("cuCtxGetCurrent"), driverEntryPoint<CtxGetIdFn>("cuCtxGetId")};
    return api;
}

//! The CUDA runtime as packedAttentionLaunch.h's Runtime policy.
struct CudaRuntime
{
    static bool currentDevice(int& device)
    {
        return cudaGetDevice(&device) == cudaSuccess;
    }

    static bool queryDeviceLimits(int device, detail::DeviceLimits& limits)
    {
        return cudaDeviceGetAttribute(&limits.ccMajor, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess
            && cudaDeviceGetAttribute(&limits.smemOptin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)
            == cudaSuccess;
    }

    static bool currentContextId(unsigned long long& id)
    {
        DriverContextApi const& api = driverContextApi();
        CUcontext context = nullptr;
        return api.getCurrent != nullptr && api.getId != nullptr && api.getCurrent(&context) == CUDA_SUCCESS
            && context != nullptr && api.getId(context, &id) == CUDA_SUCCESS;
    }

    static bool setMaxDynamicSmem(detail::KernelFn kernel, int bytes)
    {
        return cudaFuncSetAttribute(
                   reinterpret_cast<void const*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)
            == cudaSuccess;
    }
};

detail::LaunchCaches& cudaLaunchCaches()
{
    static detail::LaunchCaches caches;
    return caches;
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
    detail::LaunchPlan plan;
    int const status = detail::planPackedAttention<CudaRuntime>(cudaLaunchCaches(), q, k, v, cuSeqlens, out,
        totalTokens, numSeqs, numHeads, headDim, scale, isFp16, algo, plan);
    if (status != kPACKED_ATTENTION_OK || plan.gridX == 0)
    {
        return status;
    }
    dim3 const grid(plan.gridX, plan.gridY, 1U);
    dim3 const block(static_cast<unsigned>(plan.config.threads), 1U, 1U);
    plan.config.kernel<<<grid, block, static_cast<size_t>(plan.config.smemBytes), stream>>>(plan.params);
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
