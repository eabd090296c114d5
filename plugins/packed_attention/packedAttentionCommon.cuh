/*
 * Device code of NavitPackedAttention (see packedAttentionKernel.h for the semantics).
 *
 * Two kernel families, both flash-attention style (online softmax, FP32 accumulation, memory linear in T):
 *   - packedAttentionSimtKernel<T, D, BM, BN>: FP32 FMA kernel for float and half inputs. 128 threads;
 *     thread (rowGroup = tid / 8, colLane = tid % 8) owns BM/16 query rows of the tile.
 *   - packedAttentionWmmaKernel<D, BN, WARPS>: tensor-core kernel (WMMA 16x16x16, fp16 in, fp32 accumulate)
 *     for half inputs; warp w owns query rows [16w, 16w + 16) of the tile. Scores and the output
 *     accumulator go through shared memory so that the softmax can be done with plain per-row code.
 *
 * Work decomposition: grid = (ceil(T / BM) + numSeqs, numHeads). Image b owns the blocks
 * [S(b), S(b+1)) with S(b) = floor(cuSeqlens[b] / BM) + b, and its j-th block computes its j-th query tile, so a
 * tile never straddles two images and its key loop only visits its own image's tokens. S is strictly increasing,
 * and S(b+1) - S(b) = floor(cu[b+1] / BM) - floor(cu[b] / BM) + 1 >= ceil(len_b / BM): every tile has a block
 * (at most one block per image is left idle). Blocks [S(B), grid), B = numSeqs, zero the padding rows
 * [cu[B], T): there are ceil(T / BM) - floor(cu[B] / BM) >= ceil((T - cu[B]) / BM) of them. A block finds its
 * image (the largest b with S(b) <= x) with a warp-wide 32-ary search over cuSeqlens: ceil(log_32(B + 1))
 * rounds of one load per lane and one ballot, instead of a scan of cuSeqlens (which cost O(B / 32) per block).
 * cuSeqlens values are clamped to [0, T], so invalid ones (decreasing, out of range) never lead outside the
 * tensors; the output is then unspecified.
 *
 * This file is also compiled on the CPU by tests/plugins/emu (NAVIT_EMULATION defined), which supplies the
 * CUDA built-ins used here; keep to that subset (no inline PTX, no static __shared__ arrays).
 */
#ifndef NAVIT_PACKED_ATTENTION_COMMON_CUH
#define NAVIT_PACKED_ATTENTION_COMMON_CUH

#ifndef NAVIT_EMULATION
#include <cuda_fp16.h>
#include <math_constants.h>
#include <mma.h>
#include <stdint.h>
#define NAVIT_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#define NAVIT_NEG_INF (-CUDART_INF_F)
#define NAVIT_UNROLL _Pragma("unroll")
#endif

namespace navit
{
namespace detail
{

constexpr float kLog2e = 1.4426950408889634F;
constexpr unsigned kFullMask = 0xffffffffU;
//! Bytes reserved at the start of dynamic shared memory for the work-item info (keeps 128-byte alignment).
constexpr int kInfoBytes = 128;

struct PackedAttentionParams
{
    void const* q;
    void const* k;
    void const* v;
    int32_t const* cuSeqlens;
    void* out;
    int32_t totalTokens;
    int32_t numSeqs;
    int32_t numHeads;
    float scaleLog2; //!< softmax scale * log2(e): scores are exponentiated with exp2f
};

struct WorkItem
{
    int32_t found;        //!< 1: this block computes a query tile
    int32_t segStart;     //!< first token of the tile's image
    int32_t segEnd;       //!< one past the last token of the tile's image
    int32_t qStart;       //!< first query token of the tile
    int32_t padIndex;     //!< >= 0: this block zeroes padding, as the padIndex-th of numPadBlocks; -1 otherwise
    int32_t numPadBlocks; //!< blocks that zero padding (valid when padIndex >= 0)
    int32_t padStart;     //!< first padding token, clamp(cuSeqlens[numSeqs], 0, T) (valid when padIndex >= 0)
};

__device__ __forceinline__ int32_t clampInt(int32_t x, int32_t lo, int32_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

__device__ __forceinline__ int32_t minInt(int32_t a, int32_t b)
{
    return a < b ? a : b;
}

//! First block of image b (b == numSeqs: first padding block): floor(clamp(cuSeqlens[b]) / BM) + b.
template <int BM>
__device__ __forceinline__ int32_t firstBlockOf(PackedAttentionParams const& p, int32_t b)
{
    return clampInt(p.cuSeqlens[b], 0, p.totalTokens) / BM + b;
}

//! Find the query tile (or padding rows) of this block. Called by all threads; warp 0 searches cuSeqlens for
//! the largest b in [0, numSeqs] with firstBlockOf(b) <= blockIdx.x: each round, lane i tests the candidate
//! lo + i * step, and the ballot narrows [lo, hi) to one step (32-ary search; for monotone cuSeqlens the true
//! lanes are a prefix). The result is published in `info` for the other warps.
template <int BM>
__device__ WorkItem findWorkItem(PackedAttentionParams const& p, int32_t* info)
{
    if (threadIdx.x < 32)
    {
        int32_t const lane = static_cast<int32_t>(threadIdx.x);
        int32_t const x = static_cast<int32_t>(blockIdx.x);
        int32_t lo = 0;
        int32_t hi = p.numSeqs + 1;
        while (hi - lo > 1) // warp-uniform: lo and hi only change through the ballot
        {
            int32_t const step = (hi - lo + 31) / 32;
            int64_t const b = static_cast<int64_t>(lo) + static_cast<int64_t>(lane) * step;
            bool const below = b < hi && firstBlockOf<BM>(p, static_cast<int32_t>(b)) <= x;
            int32_t const count = __popc(__ballot_sync(kFullMask, below));
            if (count == 0)
            {
                hi = lo + 1; // only with invalid cuSeqlens; the check below then finds no work
                break;
            }
            lo += (count - 1) * step; // the last true lane's candidate: below hi (lanes past hi are false)
            int64_t const next = static_cast<int64_t>(lo) + step;
            hi = next < hi ? static_cast<int32_t>(next) : hi;
        }
        if (lane == 0)
        {
            int32_t const total = p.totalTokens;
            int32_t const first = firstBlockOf<BM>(p, lo);
            int32_t item[7] = {0, 0, 0, 0, -1, 0, 0}; // the WorkItem fields, in order
            if (first <= x && lo == p.numSeqs)
            {
                item[4] = x - first;
                item[5] = static_cast<int32_t>(gridDim.x) - first;
                item[6] = clampInt(p.cuSeqlens[lo], 0, total);
            }
            else if (first <= x)
            {
                int32_t const s = clampInt(p.cuSeqlens[lo], 0, total);
                int32_t const e = clampInt(p.cuSeqlens[lo + 1], s, total);
                int32_t const tile = x - first;
                if (tile < (e - s + BM - 1) / BM)
                {
                    item[0] = 1;
                    item[1] = s;
                    item[2] = e;
                    item[3] = s + tile * BM;
                }
            }
            NAVIT_UNROLL
            for (int i = 0; i < 7; ++i)
            {
                info[i] = item[i];
            }
        }
    }
    __syncthreads();
    WorkItem w;
    w.found = info[0];
    w.segStart = info[1];
    w.segEnd = info[2];
    w.qStart = info[3];
    w.padIndex = info[4];
    w.numPadBlocks = info[5];
    w.padStart = info[6];
    return w;
}

//! 16-byte vector helpers: a "chunk" is 4 floats or 8 halves.
template <typename T>
struct Chunk;

template <>
struct Chunk<float>
{
    static constexpr int kElems = 4;
    __device__ __forceinline__ static void toFloat(float4 const& raw, float* f)
    {
        f[0] = raw.x;
        f[1] = raw.y;
        f[2] = raw.z;
        f[3] = raw.w;
    }
};

template <>
struct Chunk<__half>
{
    static constexpr int kElems = 8;
    __device__ __forceinline__ static void toFloat(float4 const& raw, float* f)
    {
        __half const* h = reinterpret_cast<__half const*>(&raw);
        NAVIT_UNROLL
        for (int i = 0; i < 8; ++i)
        {
            f[i] = __half2float(h[i]);
        }
    }
};

//! Copy rows [t0, t0 + rows) of one head (D elements each, row stride ld) into shared memory as float with
//! row stride dstLd; rows at or beyond tEnd are zero-filled (never read from global memory).
template <typename T, int D>
__device__ __forceinline__ void loadTileAsFloat(
    float* dst, int dstLd, T const* __restrict__ src, int64_t ld, int32_t t0, int32_t tEnd, int rows)
{
    constexpr int kE = Chunk<T>::kElems;
    constexpr int kChunksPerRow = D / kE;
    for (int idx = static_cast<int>(threadIdx.x); idx < rows * kChunksPerRow; idx += static_cast<int>(blockDim.x))
    {
        int const r = idx / kChunksPerRow;
        int const c = (idx % kChunksPerRow) * kE;
        int32_t const t = t0 + r;
        float f[kE];
        if (t < tEnd)
        {
            float4 const raw = *reinterpret_cast<float4 const*>(src + static_cast<int64_t>(t) * ld + c);
            Chunk<T>::toFloat(raw, f);
        }
        else
        {
            NAVIT_UNROLL
            for (int i = 0; i < kE; ++i)
            {
                f[i] = 0.F;
            }
        }
        NAVIT_UNROLL
        for (int i = 0; i < kE; i += 4)
        {
            *reinterpret_cast<float4*>(dst + r * dstLd + c + i) = make_float4(f[i], f[i + 1], f[i + 2], f[i + 3]);
        }
    }
}

//! Copy rows of one head of a half tensor into shared memory unchanged (half, row stride dstLd).
template <int D>
__device__ __forceinline__ void loadTileHalf(
    __half* dst, int dstLd, __half const* __restrict__ src, int64_t ld, int32_t t0, int32_t tEnd, int rows)
{
    constexpr int kChunksPerRow = D / 8;
    for (int idx = static_cast<int>(threadIdx.x); idx < rows * kChunksPerRow; idx += static_cast<int>(blockDim.x))
    {
        int const r = idx / kChunksPerRow;
        int const c = (idx % kChunksPerRow) * 8;
        int32_t const t = t0 + r;
        float4 raw = make_float4(0.F, 0.F, 0.F, 0.F);
        if (t < tEnd)
        {
            raw = *reinterpret_cast<float4 const*>(src + static_cast<int64_t>(t) * ld + c);
        }
        *reinterpret_cast<float4*>(dst + r * dstLd + c) = raw;
    }
}

//! Zero the padding rows of one head. Padding block e of numPadBlocks zeroes rows padStart + e*BM + [0, BM),
//! then strides by numPadBlocks*BM. Blocks that are not padding blocks (idle slots) return at once.
template <typename T, int D, int BM>
__device__ void zeroPadding(T* out, int64_t ld, WorkItem const& w, int32_t totalTokens)
{
    constexpr int kChunksPerRow = D * static_cast<int>(sizeof(T)) / 16;
    int32_t const extra = w.padIndex;
    int32_t const numExtra = w.numPadBlocks;
    if (extra < 0 || numExtra <= 0)
    {
        return;
    }
    float4 const zero = make_float4(0.F, 0.F, 0.F, 0.F);
    for (int64_t row0 = static_cast<int64_t>(w.padStart) + static_cast<int64_t>(extra) * BM; row0 < totalTokens;
         row0 += static_cast<int64_t>(numExtra) * BM)
    {
        for (int idx = static_cast<int>(threadIdx.x); idx < BM * kChunksPerRow; idx += static_cast<int>(blockDim.x))
        {
            int64_t const t = row0 + idx / kChunksPerRow;
            if (t < totalTokens)
            {
                char* rowPtr = reinterpret_cast<char*>(out + t * ld);
                *reinterpret_cast<float4*>(rowPtr + (idx % kChunksPerRow) * 16) = zero;
            }
        }
    }
}

//! Store 4 consecutive outputs (already normalised) to global memory.
__device__ __forceinline__ void store4(float* dst, float a, float b, float c, float d)
{
    *reinterpret_cast<float4*>(dst) = make_float4(a, b, c, d);
}

__device__ __forceinline__ void store4(__half* dst, float a, float b, float c, float d)
{
    __half2* dst2 = reinterpret_cast<__half2*>(dst);
    dst2[0] = __floats2half2_rn(a, b);
    dst2[1] = __floats2half2_rn(c, d);
}

} // namespace detail
} // namespace navit

#endif // NAVIT_PACKED_ATTENTION_COMMON_CUH
