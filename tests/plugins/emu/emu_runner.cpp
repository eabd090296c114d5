/*
 * CPU runner for the NavitPackedAttention device code (see cuda_emu.h). Built into a shared library by
 * tests/plugins/test_packed_attention_emulation.py and driven through ctypes with host (numpy) buffers.
 * Test-only code.
 */
#include "cuda_emu.h"

#include "packedAttentionDevice.cuh"

#include <cstdlib>

namespace
{

struct LaunchContext
{
    navit::detail::KernelConfig config;
    navit::detail::PackedAttentionParams params;
};

void blockEntry(void* arg)
{
    auto* ctx = static_cast<LaunchContext*>(arg);
    ctx->config.kernel(ctx->params);
}

int candidates(int32_t algo, int32_t isFp16, int32_t headDim, navit::detail::KernelConfig* out)
{
    if (algo == 2)
    {
        return isFp16 ? navit::detail::wmmaCandidates(headDim, out) : 0;
    }
    return isFp16 ? navit::detail::simtCandidates<__half>(headDim, out)
                  : navit::detail::simtCandidates<float>(headDim, out);
}

//! Work-item lookup only: block x records what findWorkItem<BM> gave it.
template <int BM>
void findWorkItemEntry(void* arg)
{
    auto* ctx = static_cast<LaunchContext*>(arg);
    NAVIT_DYNAMIC_SMEM(smem);
    navit::detail::WorkItem const w = navit::detail::findWorkItem<BM>(ctx->params, reinterpret_cast<int32_t*>(smem));
    if (threadIdx.x == 0)
    {
        int32_t* row = static_cast<int32_t*>(ctx->params.out) + 4 * static_cast<int64_t>(blockIdx.x);
        row[0] = w.found;
        row[1] = w.segStart;
        row[2] = w.segEnd;
        row[3] = w.qStart;
    }
}

} // namespace

extern "C"
{

    //! Run only the work-item lookup of every block of the grid (ceil(T/BM) + numSeqs blocks of one warp).
    //! items: [grid, 4] int32 (found, segStart, segEnd, qStart); collectives: [grid] warp-wide operations
    //! (shuffles, ballots) each block's lookup executed. Returns the grid size, or -1 for an unknown BM.
    int32_t navitEmuFindWorkItems(int32_t const* cuSeqlens, int32_t numSeqs, int32_t totalTokens, int32_t blockM,
        int32_t* items, int64_t* collectives)
    {
        void (*entry)(void*) = blockM == 64 ? &findWorkItemEntry<64> : blockM == 32 ? &findWorkItemEntry<32> : nullptr;
        if (entry == nullptr)
        {
            return -1;
        }
        LaunchContext ctx{};
        ctx.params.cuSeqlens = cuSeqlens;
        ctx.params.out = items;
        ctx.params.totalTokens = totalTokens;
        ctx.params.numSeqs = numSeqs;
        ctx.params.numHeads = 1;
        std::vector<unsigned char> smem(navit::detail::kInfoBytes, 0xFF);
        navit_emu::State& st = navit_emu::state();
        st.smem = smem.data();
        st.bDim = dim3{32U, 1U, 1U};
        unsigned const gridX = static_cast<unsigned>((totalTokens + blockM - 1) / blockM + numSeqs);
        st.gDim = dim3{gridX, 1U, 1U};
        for (unsigned bx = 0; bx < gridX; ++bx)
        {
            st.bIdx = dim3{bx, 0U, 0U};
            st.warpCollectives = 0;
            navit_emu::runBlock(entry, &ctx, 0);
            collectives[bx] = static_cast<int64_t>(st.warpCollectives);
        }
        st.smem = nullptr;
        return static_cast<int32_t>(gridX);
    }

    //! Number of tile configurations for (algo: 1 SIMT, 2 WMMA; dtype; head dim).
    int32_t navitEmuNumConfigs(int32_t algo, int32_t isFp16, int32_t headDim)
    {
        navit::detail::KernelConfig c[navit::detail::kMaxCandidates];
        return candidates(algo, isFp16, headDim, c);
    }

    //! Shared-memory bytes of one configuration.
    int32_t navitEmuSmemBytes(int32_t algo, int32_t isFp16, int32_t headDim, int32_t configIndex)
    {
        navit::detail::KernelConfig c[navit::detail::kMaxCandidates];
        int const n = candidates(algo, isFp16, headDim, c);
        return configIndex >= 0 && configIndex < n ? c[configIndex].smemBytes : -1;
    }

    //! Run the kernel on host buffers. order: 0 forward, 1 reverse, >1 shuffled with that seed.
    int32_t navitEmuRun(void const* q, void const* k, void const* v, int32_t const* cuSeqlens, void* out,
        int32_t totalTokens, int32_t numSeqs, int32_t numHeads, int32_t headDim, float scale, int32_t isFp16,
        int32_t algo, int32_t configIndex, int32_t order)
    {
        navit::detail::KernelConfig c[navit::detail::kMaxCandidates];
        int const n = candidates(algo, isFp16, headDim, c);
        if (configIndex < 0 || configIndex >= n)
        {
            return -1;
        }
        LaunchContext ctx{};
        ctx.config = c[configIndex];
        ctx.params.q = q;
        ctx.params.k = k;
        ctx.params.v = v;
        ctx.params.cuSeqlens = cuSeqlens;
        ctx.params.out = out;
        ctx.params.totalTokens = totalTokens;
        ctx.params.numSeqs = numSeqs;
        ctx.params.numHeads = numHeads;
        float const s = scale == 0.F ? 1.F / std::sqrt(static_cast<float>(headDim)) : scale;
        ctx.params.scaleLog2 = s * navit::detail::kLog2e;

        size_t const smemSize = (static_cast<size_t>(ctx.config.smemBytes) + 127U) & ~size_t{127U};
        auto* smem = static_cast<unsigned char*>(std::aligned_alloc(128, smemSize));
        navit_emu::State& st = navit_emu::state();
        st.smem = smem;
        st.bDim = dim3{static_cast<unsigned>(ctx.config.threads), 1U, 1U};
        unsigned const gridX = static_cast<unsigned>(
            (totalTokens + ctx.config.blockM - 1) / ctx.config.blockM + numSeqs);
        st.gDim = dim3{gridX, static_cast<unsigned>(numHeads), 1U};
        for (unsigned by = 0; by < st.gDim.y; ++by)
        {
            for (unsigned bx = 0; bx < gridX; ++bx)
            {
                st.bIdx = dim3{bx, by, 0U};
                std::memset(smem, 0xFF, smemSize); // NaN garbage: reads of unwritten shared memory show up
                navit_emu::runBlock(&blockEntry, &ctx, order);
            }
        }
        st.smem = nullptr;
        std::free(smem);
        return 0;
    }

} // extern "C"
