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
 * Work decomposition: grid = (ceil(T / BM) + numSeqs, numHeads). The work items are the (segment, query tile)
 * pairs, enumerated segment by segment; block x takes item x (found by a warp-wide scan over cuSeqlens), so a
 * query tile never straddles two images, and its key loop only visits its own image's tokens. Blocks beyond
 * the last item zero the padding rows [cuSeqlens[numSeqs], T). A bound check: the number of items is at most
 * sum_b ceil(len_b / BM) <= (L + numSeqs * (BM - 1)) / BM, so at least ceil((T - L) / BM) blocks are left for
 * the padding, L = cuSeqlens[numSeqs].
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
    int32_t found;      //!< 1: this block computes a query tile; 0: it zeroes padding rows
    int32_t segStart;   //!< first token of the tile's image
    int32_t segEnd;     //!< one past the last token of the tile's image
    int32_t qStart;     //!< first query token of the tile
    int32_t totalTiles; //!< number of (segment, tile) items (valid when found == 0)
    int32_t padStart;   //!< first padding token, clamp(cuSeqlens[numSeqs], 0, T)
};

__device__ __forceinline__ int32_t clampInt(int32_t x, int32_t lo, int32_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

__device__ __forceinline__ int32_t minInt(int32_t a, int32_t b)
{
    return a < b ? a : b;
}

//! Find the (segment, query tile) handled by this block. Called by all threads; warp 0 scans cuSeqlens
//! (32 segments per step: tile counts, inclusive warp scan, ballot) and publishes the result in `info`.
template <int BM>
__device__ WorkItem findWorkItem(PackedAttentionParams const& p, int32_t* info)
{
    if (threadIdx.x < 32)
    {
        int32_t const lane = static_cast<int32_t>(threadIdx.x);
        int32_t const total = p.totalTokens;
        int32_t const target = static_cast<int32_t>(blockIdx.x);
        int32_t base = 0;
        bool found = false;
        for (int32_t c = 0; c < p.numSeqs; c += 32)
        {
            int32_t const b = c + lane;
            int32_t s = 0;
            int32_t e = 0;
            if (b < p.numSeqs)
            {
                s = clampInt(p.cuSeqlens[b], 0, total);
                e = clampInt(p.cuSeqlens[b + 1], s, total);
            }
            int32_t const tiles = (e - s + BM - 1) / BM;
            int32_t incl = tiles;
            for (int32_t off = 1; off < 32; off <<= 1)
            {
                int32_t const n = __shfl_up_sync(kFullMask, incl, off);
                if (lane >= off)
                {
                    incl += n;
                }
            }
            int32_t const excl = incl - tiles;
            bool const mine = tiles > 0 && target >= base + excl && target < base + incl;
            unsigned const ballot = __ballot_sync(kFullMask, mine);
            if (mine)
            {
                info[0] = 1;
                info[1] = s;
                info[2] = e;
                info[3] = s + (target - base - excl) * BM;
            }
            if (ballot != 0U)
            {
                found = true;
                break;
            }
            base += __shfl_sync(kFullMask, incl, 31);
        }
        if (lane == 0)
        {
            if (!found)
            {
                info[0] = 0;
                info[4] = base;
            }
            info[5] = clampInt(p.cuSeqlens[p.numSeqs], 0, total);
        }
    }
    __syncthreads();
    WorkItem w;
    w.found = info[0];
    w.segStart = info[1];
    w.segEnd = info[2];
    w.qStart = info[3];
    w.totalTiles = info[4];
    w.padStart = info[5];
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

//! Zero the padding rows of one head. Block e of the numExtra blocks past the last work item zeroes
//! rows padStart + e*BM + [0, BM), then strides by numExtra*BM.
template <typename T, int D, int BM>
__device__ void zeroPadding(T* out, int64_t ld, WorkItem const& w, int32_t totalTokens)
{
    constexpr int kChunksPerRow = D * static_cast<int>(sizeof(T)) / 16;
    int32_t const extra = static_cast<int32_t>(blockIdx.x) - w.totalTiles;
    int32_t const numExtra = static_cast<int32_t>(gridDim.x) - w.totalTiles;
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
