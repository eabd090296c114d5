/*
 * CPU runner for the NavitPackedAttention device code (see cuda_emu.h). Built into a shared library by
 * tests/plugins/test_packed_attention_emulation.py and driven through ctypes with host (numpy) buffers.
 * Test-only code.
 */
#include "cuda_emu.h"

#include "packedAttentionDevice.cuh"
#include "packedAttentionLaunch.h"

#include <cstdlib>
#include <map>

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

//! Run every block of a launch (grid x by grid y), shared memory pre-filled with NaN bytes.
void runGrid(LaunchContext& ctx, unsigned gridX, unsigned gridY, int order)
{
    size_t const smemSize = (static_cast<size_t>(ctx.config.smemBytes) + 127U) & ~size_t{127U};
    auto* smem = static_cast<unsigned char*>(std::aligned_alloc(128, smemSize));
    navit_emu::State& st = navit_emu::state();
    st.smem = smem;
    st.bDim = dim3{static_cast<unsigned>(ctx.config.threads), 1U, 1U};
    st.gDim = dim3{gridX, gridY, 1U};
    for (unsigned by = 0; by < gridY; ++by)
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
}

//! A fake CUDA runtime for packedAttentionLaunch.h: devices with configurable limits, a current context whose
//! ID may be unavailable, per-(kernel, context) shared-memory limits as the real runtime keeps them, and a
//! count of every call.
struct FakeRuntimeState
{
    static constexpr int kDevices = 8;
    int device{0};
    navit::detail::DeviceLimits limits[kDevices]{};
    long long context{1};      //!< the current context (what the real runtime would use)
    bool contextIdKnown{true}; //!< whether currentContextId can tell it
    std::map<std::pair<void const*, long long>, int> raised; //!< (kernel, context) -> max dynamic smem set
    int64_t calls[4]{};        //!< currentDevice, queryDeviceLimits, currentContextId, setMaxDynamicSmem
};

FakeRuntimeState gFake;
navit::detail::LaunchCaches gFakeCaches;

struct FakeRuntime
{
    static bool currentDevice(int& device)
    {
        ++gFake.calls[0];
        device = gFake.device;
        return true;
    }
    static bool queryDeviceLimits(int device, navit::detail::DeviceLimits& limits)
    {
        ++gFake.calls[1];
        if (device < 0 || device >= FakeRuntimeState::kDevices)
        {
            return false;
        }
        limits = gFake.limits[device];
        return true;
    }
    static bool currentContextId(unsigned long long& id)
    {
        ++gFake.calls[2];
        id = static_cast<unsigned long long>(gFake.context);
        return gFake.contextIdKnown;
    }
    static bool setMaxDynamicSmem(navit::detail::KernelFn kernel, int bytes)
    {
        ++gFake.calls[3];
        gFake.raised[{reinterpret_cast<void const*>(kernel), gFake.context}] = bytes;
        return true;
    }
};

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
        LaunchContext ctx{c[configIndex],
            navit::detail::makeParams(q, k, v, cuSeqlens, out, totalTokens, numSeqs, numHeads, headDim, scale)};

        unsigned const gridX = static_cast<unsigned>(
            (totalTokens + ctx.config.blockM - 1) / ctx.config.blockM + numSeqs);
        runGrid(ctx, gridX, static_cast<unsigned>(numHeads), order);
        return 0;
    }

    //! Configure fake device `device` (compute capability major, opt-in shared memory) and make it current.
    void navitEmuFakeSetDevice(int32_t device, int32_t ccMajor, int32_t smemOptin)
    {
        gFake.device = device;
        if (device >= 0 && device < FakeRuntimeState::kDevices)
        {
            gFake.limits[device] = navit::detail::DeviceLimits{ccMajor, smemOptin};
        }
    }

    //! Make `context` current; `idKnown` = 0: the runtime cannot tell its ID.
    void navitEmuFakeSetContext(int64_t context, int32_t idKnown)
    {
        gFake.context = context;
        gFake.contextIdKnown = idKnown != 0;
    }

    //! Calls made so far: currentDevice, queryDeviceLimits, currentContextId, setMaxDynamicSmem.
    void navitEmuFakeCalls(int64_t* out)
    {
        for (int i = 0; i < 4; ++i)
        {
            out[i] = gFake.calls[i];
        }
    }

    //! The launcher's whole host path (packedAttentionLaunch.h) on the fake runtime, then the planned grid in
    //! the emulation. Like the real runtime, a launch needing more than 48 KiB of shared memory fails
    //! (kPACKED_ATTENTION_CUDA_ERROR) unless the kernel's limit was raised in the current context.
    //! smemBytes: the chosen configuration's shared memory (0 when nothing was launched).
    int32_t navitEmuLaunch(void const* q, void const* k, void const* v, int32_t const* cuSeqlens, void* out,
        int32_t totalTokens, int32_t numSeqs, int32_t numHeads, int32_t headDim, float scale, int32_t isFp16,
        int32_t algo, int32_t* smemBytes)
    {
        navit::detail::LaunchPlan plan;
        int const status = navit::detail::planPackedAttention<FakeRuntime>(gFakeCaches, q, k, v, cuSeqlens, out,
            totalTokens, numSeqs, numHeads, headDim, scale, isFp16 != 0, algo, plan);
        *smemBytes = 0;
        if (status != navit::kPACKED_ATTENTION_OK || plan.gridX == 0)
        {
            return status;
        }
        if (plan.config.smemBytes > navit::detail::kDefaultSmemBytes)
        {
            auto const it = gFake.raised.find({reinterpret_cast<void const*>(plan.config.kernel), gFake.context});
            if (it == gFake.raised.end() || it->second < plan.config.smemBytes)
            {
                return navit::kPACKED_ATTENTION_CUDA_ERROR; // cudaErrorInvalidValue from the launch
            }
        }
        *smemBytes = plan.config.smemBytes;
        LaunchContext ctx{plan.config, plan.params};
        runGrid(ctx, plan.gridX, plan.gridY, 0);
        return navit::kPACKED_ATTENTION_OK;
    }

} // extern "C"
