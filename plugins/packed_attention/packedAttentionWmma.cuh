/*
 * Tensor-core (WMMA, fp16 in / fp32 accumulate) kernel of NavitPackedAttention. See packedAttentionCommon.cuh.
 */
#ifndef NAVIT_PACKED_ATTENTION_WMMA_CUH
#define NAVIT_PACKED_ATTENTION_WMMA_CUH

#include "packedAttentionCommon.cuh"

namespace navit
{
namespace detail
{

template <int D, int BN, int WARPS>
struct WmmaConfig
{
    static constexpr int kBM = 16 * WARPS;
    static constexpr int kThreads = 32 * WARPS;
    static constexpr int kLdQKV = D + 8; //!< halves
    static constexpr int kLdS = BN + 4;  //!< floats
    static constexpr int kLdP = BN + 8;  //!< halves; P aliases the warp's own S rows
    static constexpr int kLdO = D + 4;   //!< floats
    static constexpr int kSmemBytes
        = kInfoBytes + 2 * (kBM + 2 * BN) * kLdQKV + 4 * kBM * kLdS + 4 * kBM * kLdO;
    static_assert(D % 16 == 0 && BN % 16 == 0, "bad WMMA tile");
    static_assert(16 * kLdP * 2 <= 16 * kLdS * 4, "P must fit in the warp's S rows");
};

template <int D, int BN, int WARPS>
__global__ void __launch_bounds__(32 * WARPS) packedAttentionWmmaKernel(PackedAttentionParams p)
{
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 700)
    __trap(); // never launched: the host picks the SIMT kernel below sm_70
#else
    namespace wmma = nvcuda::wmma;
    using Cfg = WmmaConfig<D, BN, WARPS>;
    constexpr int kBM = Cfg::kBM;
    constexpr int kLd = Cfg::kLdQKV;
    constexpr int kHalfD = D / 2;
    constexpr int kHalfBN = BN / 2;
    NAVIT_DYNAMIC_SMEM(smem);
    int32_t* info = reinterpret_cast<int32_t*>(smem);
    __half* sQ = reinterpret_cast<__half*>(smem + kInfoBytes);
    __half* sK = sQ + kBM * kLd;
    __half* sV = sK + BN * kLd;
    float* sS = reinterpret_cast<float*>(sV + BN * kLd);
    float* sO = sS + kBM * Cfg::kLdS;

    int const warp = static_cast<int>(threadIdx.x) >> 5;
    int const lane = static_cast<int>(threadIdx.x) & 31;
    int64_t const ld = static_cast<int64_t>(p.numHeads) * D;
    int64_t const headOffset = static_cast<int64_t>(blockIdx.y) * D;
    __half* out = static_cast<__half*>(p.out) + headOffset;

    WorkItem const w = findWorkItem<kBM>(p, info);
    if (!w.found)
    {
        zeroPadding<__half, D, kBM>(out, ld, w, p.totalTokens);
        return;
    }
    __half const* q = static_cast<__half const*>(p.q) + headOffset;
    __half const* k = static_cast<__half const*>(p.k) + headOffset;
    __half const* v = static_cast<__half const*>(p.v) + headOffset;

    loadTileHalf<D>(sQ, kLd, q, ld, w.qStart, w.segEnd, kBM);

    // Warp-private rows: scores/probabilities and the output accumulator of rows [16*warp, 16*warp + 16).
    float* sSw = sS + 16 * warp * Cfg::kLdS;
    __half* sPw = reinterpret_cast<__half*>(sSw);
    float* sOw = sO + 16 * warp * Cfg::kLdO;
    int const row = lane >> 1;  // softmax: two lanes per row ...
    int const part = lane & 1;  // ... each owning half of the columns
    for (int c = 0; c < kHalfD; ++c)
    {
        sOw[row * Cfg::kLdO + part * kHalfD + c] = 0.F;
    }
    float mRow = NAVIT_NEG_INF;
    float lRow = 0.F;
    __syncthreads(); // Q visible

    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> qFrag[D / 16];
    NAVIT_UNROLL
    for (int kk = 0; kk < D / 16; ++kk)
    {
        wmma::load_matrix_sync(qFrag[kk], sQ + 16 * warp * kLd + 16 * kk, kLd);
    }

    for (int32_t kStart = w.segStart; kStart < w.segEnd; kStart += BN)
    {
        __syncthreads(); // every warp is done with the previous K/V tile
        loadTileHalf<D>(sK, kLd, k, ld, kStart, w.segEnd, BN);
        loadTileHalf<D>(sV, kLd, v, ld, kStart, w.segEnd, BN);
        __syncthreads();
        int const kValid = minInt(BN, w.segEnd - kStart);
        int const nTiles = (kValid + 15) / 16; // 16-key column blocks holding at least one valid key

        for (int nt = 0; nt < nTiles; ++nt)
        {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sFrag;
            wmma::fill_fragment(sFrag, 0.F);
            NAVIT_UNROLL
            for (int kk = 0; kk < D / 16; ++kk)
            {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> kFrag;
                wmma::load_matrix_sync(kFrag, sK + 16 * nt * kLd + 16 * kk, kLd);
                wmma::mma_sync(sFrag, qFrag[kk], kFrag, sFrag);
            }
            wmma::store_matrix_sync(sSw + 16 * nt, sFrag, Cfg::kLdS, wmma::mem_row_major);
        }
        __syncwarp();

        float sv[kHalfBN];
        float tileMax = NAVIT_NEG_INF;
        NAVIT_UNROLL
        for (int c = 0; c < kHalfBN; ++c)
        {
            int const col = part * kHalfBN + c;
            float const x = col < kValid ? sSw[row * Cfg::kLdS + col] * p.scaleLog2 : NAVIT_NEG_INF;
            sv[c] = x;
            tileMax = fmaxf(tileMax, x);
        }
        tileMax = fmaxf(tileMax, __shfl_xor_sync(kFullMask, tileMax, 1));
        float const mNew = fmaxf(mRow, tileMax);
        float const mUse = (mNew == NAVIT_NEG_INF) ? 0.F : mNew;
        float const alpha = exp2f(mRow - mUse);
        __syncwarp(); // all S reads done before P overwrites the same bytes
        float rowSum = 0.F;
        NAVIT_UNROLL
        for (int c = 0; c < kHalfBN; ++c)
        {
            float const pv = exp2f(sv[c] - mUse);
            rowSum += pv;
            sPw[row * Cfg::kLdP + part * kHalfBN + c] = __float2half_rn(pv);
        }
        rowSum += __shfl_xor_sync(kFullMask, rowSum, 1);
        lRow = lRow * alpha + rowSum;
        mRow = mNew;
        for (int c = 0; c < kHalfD; ++c)
        {
            sOw[row * Cfg::kLdO + part * kHalfD + c] *= alpha;
        }
        __syncwarp(); // P and the rescaled O visible to the whole warp

        for (int nt = 0; nt < D / 16; ++nt)
        {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> oFrag;
            wmma::load_matrix_sync(oFrag, sOw + 16 * nt, Cfg::kLdO, wmma::mem_row_major);
            for (int kk = 0; kk < nTiles; ++kk) // P is 0 and V rows are 0 past kValid
            {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> pFrag;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> vFrag;
                wmma::load_matrix_sync(pFrag, sPw + 16 * kk, Cfg::kLdP);
                wmma::load_matrix_sync(vFrag, sV + 16 * kk * kLd + 16 * nt, kLd);
                wmma::mma_sync(oFrag, pFrag, vFrag, oFrag);
            }
            wmma::store_matrix_sync(sOw + 16 * nt, oFrag, Cfg::kLdO, wmma::mem_row_major);
        }
        __syncwarp(); // O stored before the next rescale / the epilogue reads it
    }

    int32_t const t = w.qStart + 16 * warp + row;
    if (t < w.segEnd)
    {
        float const inv = 1.F / lRow;
        float const* src = sOw + row * Cfg::kLdO + part * kHalfD;
        __half* dst = out + static_cast<int64_t>(t) * ld + part * kHalfD;
        for (int c = 0; c < kHalfD; c += 4)
        {
            store4(dst + c, src[c] * inv, src[c + 1] * inv, src[c + 2] * inv, src[c + 3] * inv);
        }
    }
#endif
}

} // namespace detail
} // namespace navit

#endif // NAVIT_PACKED_ATTENTION_WMMA_CUH
