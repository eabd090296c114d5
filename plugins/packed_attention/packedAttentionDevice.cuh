/*
 * Kernel configurations of NavitPackedAttention (host side): which tile sizes exist and their order of
 * preference. Included by the launcher (packedAttentionKernel.cu) and by the CPU emulation test.
 */
#ifndef NAVIT_PACKED_ATTENTION_DEVICE_CUH
#define NAVIT_PACKED_ATTENTION_DEVICE_CUH

#include "packedAttentionCommon.cuh"
#include "packedAttentionSimt.cuh"
#include "packedAttentionWmma.cuh"

namespace navit
{
namespace detail
{


//! One launchable kernel configuration (host side).
struct KernelConfig
{
    void (*kernel)(PackedAttentionParams);
    int threads;
    int smemBytes;
    int blockM; //!< query rows per block
};

template <typename T, int D, int BM, int BN>
inline KernelConfig simtConfig()
{
    using Cfg = SimtConfig<D, BM, BN>;
    return KernelConfig{&packedAttentionSimtKernel<T, D, BM, BN>, Cfg::kThreads, Cfg::kSmemBytes, BM};
}

template <int D, int BN, int WARPS>
inline KernelConfig wmmaConfig()
{
    using Cfg = WmmaConfig<D, BN, WARPS>;
    return KernelConfig{&packedAttentionWmmaKernel<D, BN, WARPS>, Cfg::kThreads, Cfg::kSmemBytes, Cfg::kBM};
}

constexpr int kMaxCandidates = 4;

//! SIMT configurations for element type T, in order of preference. The last one of each list needs at most
//! 48 KiB of shared memory (no opt-in), so every device has one that fits. Returns the count.
template <typename T>
inline int simtCandidates(int32_t headDim, KernelConfig* out)
{
    switch (headDim)
    {
    case 32: out[0] = simtConfig<T, 32, 64, 64>(); return 1;
    case 64:
        out[0] = simtConfig<T, 64, 64, 64>();
        out[1] = simtConfig<T, 64, 64, 32>();
        return 2;
    case 128:
        out[0] = simtConfig<T, 128, 64, 32>();
        out[1] = simtConfig<T, 128, 32, 16>();
        return 2;
    default: return 0;
    }
}

//! Tensor-core (fp16) configurations, same contract as simtCandidates.
inline int wmmaCandidates(int32_t headDim, KernelConfig* out)
{
    switch (headDim)
    {
    case 32: out[0] = wmmaConfig<32, 64, 4>(); return 1;
    case 64:
        out[0] = wmmaConfig<64, 64, 4>();
        out[1] = wmmaConfig<64, 32, 2>();
        return 2;
    case 128:
        out[0] = wmmaConfig<128, 64, 4>();
        out[1] = wmmaConfig<128, 32, 4>();
        out[2] = wmmaConfig<128, 32, 2>();
        return 3;
    default: return 0;
    }
}

} // namespace detail
} // namespace navit

#endif // NAVIT_PACKED_ATTENTION_DEVICE_CUH
