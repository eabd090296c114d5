/*
 * FP32 SIMT kernel of NavitPackedAttention (float and half inputs). See packedAttentionCommon.cuh.
 */
#ifndef NAVIT_PACKED_ATTENTION_SIMT_CUH
#define NAVIT_PACKED_ATTENTION_SIMT_CUH

#include "packedAttentionCommon.cuh"

namespace navit
{
namespace detail
{

template <int D, int BM, int BN>
struct SimtConfig
{
    static constexpr int kThreads = 128;
    static constexpr int kRM = BM / 16; //!< query rows per thread
    static constexpr int kCN = BN / 8;  //!< score columns per thread
    static constexpr int kDC = D / 32;  //!< float4 output chunks per thread
    static constexpr int kLdQ = D + 4;
    static constexpr int kLdKV = D + 4;
    static constexpr int kLdP = BN + 4;
    static constexpr int kSmemBytes = kInfoBytes + 4 * (BM * kLdQ + 2 * BN * kLdKV + BM * kLdP);
    static_assert(BM % 16 == 0 && BN % 8 == 0 && D % 32 == 0, "bad SIMT tile");
};

template <typename T, int D, int BM, int BN>
__global__ void __launch_bounds__(128) packedAttentionSimtKernel(PackedAttentionParams p)
{
    using Cfg = SimtConfig<D, BM, BN>;
    constexpr int kRM = Cfg::kRM;
    constexpr int kCN = Cfg::kCN;
    constexpr int kDC = Cfg::kDC;
    NAVIT_DYNAMIC_SMEM(smem);
    int32_t* info = reinterpret_cast<int32_t*>(smem);
    float* sQ = reinterpret_cast<float*>(smem + kInfoBytes);
    float* sK = sQ + BM * Cfg::kLdQ;
    float* sV = sK + BN * Cfg::kLdKV;
    float* sP = sV + BN * Cfg::kLdKV;

    int const tid = static_cast<int>(threadIdx.x);
    int64_t const ld = static_cast<int64_t>(p.numHeads) * D;
    int64_t const headOffset = static_cast<int64_t>(blockIdx.y) * D;
    T* out = static_cast<T*>(p.out) + headOffset;

    WorkItem const w = findWorkItem<BM>(p, info);
    if (!w.found)
    {
        zeroPadding<T, D, BM>(out, ld, w, p.totalTokens);
        return;
    }
    T const* q = static_cast<T const*>(p.q) + headOffset;
    T const* k = static_cast<T const*>(p.k) + headOffset;
    T const* v = static_cast<T const*>(p.v) + headOffset;

    loadTileAsFloat<T, D>(sQ, Cfg::kLdQ, q, ld, w.qStart, w.segEnd, BM);

    int const rowGroup = tid >> 3;
    int const colLane = tid & 7;
    float acc[kRM][kDC * 4];
    float mRow[kRM];
    float lRow[kRM];
    NAVIT_UNROLL
    for (int i = 0; i < kRM; ++i)
    {
        mRow[i] = NAVIT_NEG_INF;
        lRow[i] = 0.F;
        NAVIT_UNROLL
        for (int c = 0; c < kDC * 4; ++c)
        {
            acc[i][c] = 0.F;
        }
    }

    for (int32_t kStart = w.segStart; kStart < w.segEnd; kStart += BN)
    {
        __syncthreads(); // previous tile fully consumed (and, first time, Q visible after the next barrier)
        loadTileAsFloat<T, D>(sK, Cfg::kLdKV, k, ld, kStart, w.segEnd, BN);
        loadTileAsFloat<T, D>(sV, Cfg::kLdKV, v, ld, kStart, w.segEnd, BN);
        __syncthreads();
        int const kValid = minInt(BN, w.segEnd - kStart);

        float s[kRM][kCN];
        NAVIT_UNROLL
        for (int i = 0; i < kRM; ++i)
        {
            NAVIT_UNROLL
            for (int j = 0; j < kCN; ++j)
            {
                s[i][j] = 0.F;
            }
        }
        for (int d = 0; d < D; d += 4)
        {
            float4 qv[kRM];
            NAVIT_UNROLL
            for (int i = 0; i < kRM; ++i)
            {
                qv[i] = *reinterpret_cast<float4 const*>(sQ + (rowGroup * kRM + i) * Cfg::kLdQ + d);
            }
            NAVIT_UNROLL
            for (int j = 0; j < kCN; ++j)
            {
                float4 const kv = *reinterpret_cast<float4 const*>(sK + (colLane + 8 * j) * Cfg::kLdKV + d);
                NAVIT_UNROLL
                for (int i = 0; i < kRM; ++i)
                {
                    s[i][j] = fmaf(qv[i].x, kv.x, s[i][j]);
                    s[i][j] = fmaf(qv[i].y, kv.y, s[i][j]);
                    s[i][j] = fmaf(qv[i].z, kv.z, s[i][j]);
                    s[i][j] = fmaf(qv[i].w, kv.w, s[i][j]);
                }
            }
        }

        // Online softmax; the 8 lanes of a row group (consecutive lanes of one warp) share the rows.
        NAVIT_UNROLL
        for (int i = 0; i < kRM; ++i)
        {
            float tileMax = NAVIT_NEG_INF;
            NAVIT_UNROLL
            for (int j = 0; j < kCN; ++j)
            {
                float const x = (colLane + 8 * j < kValid) ? s[i][j] * p.scaleLog2 : NAVIT_NEG_INF;
                s[i][j] = x;
                tileMax = fmaxf(tileMax, x);
            }
            tileMax = fmaxf(tileMax, __shfl_xor_sync(kFullMask, tileMax, 1));
            tileMax = fmaxf(tileMax, __shfl_xor_sync(kFullMask, tileMax, 2));
            tileMax = fmaxf(tileMax, __shfl_xor_sync(kFullMask, tileMax, 4));
            float const mNew = fmaxf(mRow[i], tileMax);
            float const mUse = (mNew == NAVIT_NEG_INF) ? 0.F : mNew; // fully masked row: avoid inf - inf
            float const alpha = exp2f(mRow[i] - mUse);
            float rowSum = 0.F;
            float* pRow = sP + (rowGroup * kRM + i) * Cfg::kLdP;
            NAVIT_UNROLL
            for (int j = 0; j < kCN; ++j)
            {
                float const pv = exp2f(s[i][j] - mUse);
                rowSum += pv;
                pRow[colLane + 8 * j] = pv;
            }
            rowSum += __shfl_xor_sync(kFullMask, rowSum, 1);
            rowSum += __shfl_xor_sync(kFullMask, rowSum, 2);
            rowSum += __shfl_xor_sync(kFullMask, rowSum, 4);
            lRow[i] = lRow[i] * alpha + rowSum;
            mRow[i] = mNew;
            NAVIT_UNROLL
            for (int c = 0; c < kDC * 4; ++c)
            {
                acc[i][c] *= alpha;
            }
        }
        // Each row group's P rows are written and read only by its own 8 lanes, all in one warp.
        __syncwarp();

        // acc += P V. Columns >= kValid have p == 0 and zero V rows, so stop at kValid rounded up to 4.
        int const jEnd = (kValid + 3) & ~3;
        for (int j = 0; j < jEnd; j += 4)
        {
            float4 pv[kRM];
            NAVIT_UNROLL
            for (int i = 0; i < kRM; ++i)
            {
                pv[i] = *reinterpret_cast<float4 const*>(sP + (rowGroup * kRM + i) * Cfg::kLdP + j);
            }
            NAVIT_UNROLL
            for (int jj = 0; jj < 4; ++jj)
            {
                float const* vRow = sV + (j + jj) * Cfg::kLdKV + colLane * 4;
                NAVIT_UNROLL
                for (int c = 0; c < kDC; ++c)
                {
                    float4 const vv = *reinterpret_cast<float4 const*>(vRow + 32 * c);
                    NAVIT_UNROLL
                    for (int i = 0; i < kRM; ++i)
                    {
                        float const pj = jj == 0 ? pv[i].x : (jj == 1 ? pv[i].y : (jj == 2 ? pv[i].z : pv[i].w));
                        acc[i][c * 4 + 0] = fmaf(pj, vv.x, acc[i][c * 4 + 0]);
                        acc[i][c * 4 + 1] = fmaf(pj, vv.y, acc[i][c * 4 + 1]);
                        acc[i][c * 4 + 2] = fmaf(pj, vv.z, acc[i][c * 4 + 2]);
                        acc[i][c * 4 + 3] = fmaf(pj, vv.w, acc[i][c * 4 + 3]);
                    }
                }
            }
        }
    }

    NAVIT_UNROLL
    for (int i = 0; i < kRM; ++i)
    {
        int32_t const t = w.qStart + rowGroup * kRM + i;
        if (t < w.segEnd)
        {
            float const inv = 1.F / lRow[i];
            T* dst = out + static_cast<int64_t>(t) * ld + colLane * 4;
            NAVIT_UNROLL
            for (int c = 0; c < kDC; ++c)
            {
                store4(dst + 32 * c, acc[i][c * 4] * inv, acc[i][c * 4 + 1] * inv, acc[i][c * 4 + 2] * inv,
                    acc[i][c * 4 + 3] * inv);
            }
        }
    }
}


} // namespace detail
} // namespace navit

#endif // NAVIT_PACKED_ATTENTION_SIMT_CUH
