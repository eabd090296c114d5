/*
 * NavitPackedAttention: attention over a pack of images, each image attending only to itself.
 *
 * Plain C++ / CUDA runtime API. This header must stay free of TensorRT includes: it is shared by the
 * TensorRT plugin and by the kernel-only library used by the ctypes test harness.
 *
 * Layout (all tensors contiguous, row-major):
 *   q, k, v, out : [totalTokens, numHeads * headDim], float32 or float16 (all the same dtype);
 *                  head h of token t is the slice [t, h*headDim, (h+1)*headDim).
 *   cuSeqlens    : [numSeqs + 1] int32 on the device; image b owns tokens [cuSeqlens[b], cuSeqlens[b+1]).
 *                  cuSeqlens[0] == 0, non-decreasing, cuSeqlens[numSeqs] <= totalTokens.
 * Semantics: for token t of image b, out[t, h] = softmax_j(scale * q[t,h] . k[j,h]) v[j,h] over the
 * tokens j of image b only. Tokens t >= cuSeqlens[numSeqs] (padding at the end of a pack) get zeros.
 * Accumulation is FP32 (online softmax); memory use is linear in totalTokens.
 *
 * Invalid cuSeqlens (decreasing, out of range) never cause out-of-bounds memory accesses: segment bounds
 * are clamped to [0, totalTokens]. The output values are unspecified in that case.
 */
#ifndef NAVIT_PACKED_ATTENTION_KERNEL_H
#define NAVIT_PACKED_ATTENTION_KERNEL_H

#include "packedAttentionTypes.h"

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace navit
{

//! Human-readable text for a PackedAttentionStatus value.
char const* packedAttentionStatusString(int32_t status);

//! Launch the packed attention kernel on `stream`. Asynchronous; returns kPACKED_ATTENTION_OK or an error
//! code (arguments are validated before anything is launched). scale == 0 means 1/sqrt(headDim).
int launchPackedAttention(void const* q, void const* k, void const* v, int32_t const* cuSeqlens, void* out,
    int32_t totalTokens, int32_t numSeqs, int32_t numHeads, int32_t headDim, float scale, bool isFp16,
    cudaStream_t stream);

//! Same as launchPackedAttention with an explicit algorithm choice (used by tests and benchmarks).
int launchPackedAttentionAlgo(void const* q, void const* k, void const* v, int32_t const* cuSeqlens, void* out,
    int32_t totalTokens, int32_t numSeqs, int32_t numHeads, int32_t headDim, float scale, bool isFp16,
    int32_t algo, cudaStream_t stream);

} // namespace navit

#endif // NAVIT_PACKED_ATTENTION_KERNEL_H
