/*
 * extern "C" entry points of the kernel, for the ctypes harness and benchmarks (no TensorRT needed).
 * Exported from both libnavit_packed_attention_kernel.so and libnavit_packed_attention_plugin.so.
 * All pointers are device pointers; `stream` is a cudaStream_t (nullptr = legacy default stream).
 */
#include "packedAttentionKernel.h"

#include <cstdint>

#define NAVIT_EXPORT __attribute__((visibility("default")))

extern "C"
{

    //! ABI version of this C API; bump when a signature below changes.
    NAVIT_EXPORT int32_t navitPackedAttentionAbiVersion()
    {
        return 1;
    }

    //! Launch NavitPackedAttention (see packedAttentionKernel.h). Returns 0 on success, else a status code.
    NAVIT_EXPORT int32_t navitPackedAttentionLaunch(void const* q, void const* k, void const* v,
        int32_t const* cuSeqlens, void* out, int32_t totalTokens, int32_t numSeqs, int32_t numHeads,
        int32_t headDim, float scale, bool isFp16, void* stream)
    {
        return navit::launchPackedAttention(q, k, v, cuSeqlens, out, totalTokens, numSeqs, numHeads, headDim,
            scale, isFp16, static_cast<cudaStream_t>(stream));
    }

    //! Same, with an explicit algorithm: 0 auto, 1 FP32 SIMT, 2 tensor cores (fp16 only).
    NAVIT_EXPORT int32_t navitPackedAttentionLaunchAlgo(void const* q, void const* k, void const* v,
        int32_t const* cuSeqlens, void* out, int32_t totalTokens, int32_t numSeqs, int32_t numHeads,
        int32_t headDim, float scale, bool isFp16, int32_t algo, void* stream)
    {
        return navit::launchPackedAttentionAlgo(q, k, v, cuSeqlens, out, totalTokens, numSeqs, numHeads, headDim,
            scale, isFp16, algo, static_cast<cudaStream_t>(stream));
    }

    //! Static text describing a status code returned above.
    NAVIT_EXPORT char const* navitPackedAttentionStatusString(int32_t status)
    {
        return navit::packedAttentionStatusString(status);
    }

} // extern "C"
