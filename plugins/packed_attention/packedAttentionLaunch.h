/*
 * Host side of a NavitPackedAttention launch, everything but the launch itself: argument checks, the device's
 * limits, the choice of kernel configuration, the grid, and the kernel's dynamic shared-memory limit.
 *
 * Written against a Runtime policy so that the CPU emulation (tests/plugins/emu) runs exactly this code with a
 * fake runtime that counts calls. A Runtime provides these static functions (all return false on failure):
 *   bool currentDevice(int& device);                            // cudaGetDevice
 *   bool queryDeviceLimits(int device, DeviceLimits& limits);   // compute capability major, opt-in shared memory
 *   bool currentContextId(unsigned long long& id);              // unique ID of the current CUDA context
 *   bool setMaxDynamicSmem(KernelFn kernel, int bytes);         // cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
 *
 * Runtime calls per launch once the caches are warm: currentDevice only, plus currentContextId when the chosen
 * configuration needs more than 48 KiB of shared memory. Device limits are queried once per device (they are fixed
 * for the life of the process). The shared-memory attribute is a property of the kernel *in a CUDA context*: a
 * context created later (after cudaDeviceReset, or a driver-API context such as PyCUDA's) starts again from the
 * 48 KiB default, so it is raised once per (kernel, context ID); where no context ID is available it is raised on
 * every launch. Context IDs (cuCtxGetId) are unique for the life of the process, unlike context handles, which a
 * new context may reuse.
 */
#ifndef NAVIT_PACKED_ATTENTION_LAUNCH_H
#define NAVIT_PACKED_ATTENTION_LAUNCH_H

#include "packedAttentionDevice.cuh"
#include "packedAttentionTypes.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <set>
#include <utility>

namespace navit
{
namespace detail
{

using KernelFn = void (*)(PackedAttentionParams);

//! Shared memory a block may use without opting in (cudaFuncSetAttribute).
constexpr int kDefaultSmemBytes = 48 * 1024;

//! What the launcher needs to know about a device.
struct DeviceLimits
{
    int ccMajor{0};   //!< compute capability major (tensor-core kernel from 7 on)
    int smemOptin{0}; //!< cudaDevAttrMaxSharedMemoryPerBlockOptin
};

//! What stays valid from one launch to the next: device limits per device, and the (kernel, context) pairs whose
//! shared-memory limit was raised. One instance per Runtime; thread-safe.
class LaunchCaches
{
public:
    static constexpr int kMaxDevices = 64; //!< devices with higher ordinals are queried on every launch

    template <typename Runtime>
    bool deviceLimits(int device, DeviceLimits& out)
    {
        bool const cacheable = device >= 0 && device < kMaxDevices;
        if (cacheable)
        {
            int64_t const packed = mLimits[device].load(std::memory_order_acquire);
            if (packed != 0)
            {
                out.ccMajor = static_cast<int>(packed >> 32);
                out.smemOptin = static_cast<int>(packed & 0xffffffff);
                return true;
            }
        }
        if (!Runtime::queryDeviceLimits(device, out) || out.ccMajor <= 0 || out.smemOptin < 0)
        {
            return false;
        }
        if (cacheable)
        {
            int64_t const packed = (static_cast<int64_t>(out.ccMajor) << 32) | static_cast<int64_t>(out.smemOptin);
            mLimits[device].store(packed, std::memory_order_release);
        }
        return true;
    }

    template <typename Runtime>
    bool ensureSmemLimit(KernelFn kernel, int bytes)
    {
        unsigned long long context = 0;
        if (!Runtime::currentContextId(context))
        {
            return Runtime::setMaxDynamicSmem(kernel, bytes); // no context identity: set it every time
        }
        std::pair<void const*, unsigned long long> const key{reinterpret_cast<void const*>(kernel), context};
        std::lock_guard<std::mutex> lock(mMutex);
        if (mRaised.count(key) != 0)
        {
            return true;
        }
        if (!Runtime::setMaxDynamicSmem(kernel, bytes))
        {
            return false;
        }
        mRaised.insert(key);
        return true;
    }

private:
    std::atomic<int64_t> mLimits[kMaxDevices]{}; //!< (ccMajor << 32) | smemOptin; 0 = not queried yet
    std::mutex mMutex;
    std::set<std::pair<void const*, unsigned long long>> mRaised;
};

//! A launch ready to go: kernel configuration, grid and parameters. gridX == 0: nothing to launch (empty pack).
struct LaunchPlan
{
    KernelConfig config{};
    unsigned gridX{0};
    unsigned gridY{0};
    PackedAttentionParams params{};
};

inline bool isAligned16(void const* ptr)
{
    return (reinterpret_cast<uintptr_t>(ptr) & 15U) == 0U;
}

//! Kernel parameters of a launch; scale == 0 means 1/sqrt(headDim).
inline PackedAttentionParams makeParams(void const* q, void const* k, void const* v, int32_t const* cuSeqlens,
    void* out, int32_t totalTokens, int32_t numSeqs, int32_t numHeads, int32_t headDim, float scale)
{
    PackedAttentionParams params{};
    params.q = q;
    params.k = k;
    params.v = v;
    params.cuSeqlens = cuSeqlens;
    params.out = out;
    params.totalTokens = totalTokens;
    params.numSeqs = numSeqs;
    params.numHeads = numHeads;
    float const effectiveScale = scale == 0.F ? 1.F / std::sqrt(static_cast<float>(headDim)) : scale;
    params.scaleLog2 = effectiveScale * kLog2e;
    return params;
}

//! Validate the arguments (before any runtime call), pick the kernel configuration for the current device and
//! fill `plan`; returns a PackedAttentionStatus. See packedAttentionKernel.h for the arguments.
template <typename Runtime>
int planPackedAttention(LaunchCaches& caches, void const* q, void const* k, void const* v, int32_t const* cuSeqlens,
    void* out, int32_t totalTokens, int32_t numSeqs, int32_t numHeads, int32_t headDim, float scale, bool isFp16,
    int32_t algo, LaunchPlan& plan)
{
    plan = LaunchPlan{};
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
    DeviceLimits limits;
    if (!Runtime::currentDevice(device) || !caches.deviceLimits<Runtime>(device, limits))
    {
        return kPACKED_ATTENTION_CUDA_ERROR;
    }
    bool const useTensorCores = isFp16 && limits.ccMajor >= 7 && algo != kPACKED_ATTENTION_ALGO_SIMT;
    if (algo == kPACKED_ATTENTION_ALGO_TENSOR_CORE && !useTensorCores)
    {
        return kPACKED_ATTENTION_BAD_ALGO;
    }

    KernelConfig candidates[kMaxCandidates];
    int const numCandidates = useTensorCores ? wmmaCandidates(headDim, candidates)
        : isFp16                             ? simtCandidates<__half>(headDim, candidates)
                                             : simtCandidates<float>(headDim, candidates);
    KernelConfig const* chosen = nullptr;
    for (int i = 0; i < numCandidates; ++i)
    {
        if (candidates[i].smemBytes <= limits.smemOptin || candidates[i].smemBytes <= kDefaultSmemBytes)
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
    if (chosen->smemBytes > kDefaultSmemBytes && !caches.ensureSmemLimit<Runtime>(chosen->kernel, chosen->smemBytes))
    {
        return kPACKED_ATTENTION_CUDA_ERROR;
    }

    plan.config = *chosen;
    plan.gridX = static_cast<unsigned>(gridX);
    plan.gridY = static_cast<unsigned>(numHeads);
    plan.params = makeParams(q, k, v, cuSeqlens, out, totalTokens, numSeqs, numHeads, headDim, scale);
    return kPACKED_ATTENTION_OK;
}

} // namespace detail
} // namespace navit

#endif // NAVIT_PACKED_ATTENTION_LAUNCH_H
