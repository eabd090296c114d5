/*
 * Minimal CPU emulation of the CUDA subset used by the plugins/packed_attention .cuh files, for testing the kernel
 * logic (work decomposition, masking, online softmax, synchronisation) on a machine without a GPU.
 *
 * Every CUDA thread of a block is a ucontext fiber on one OS thread. Fibers run until they reach a
 * synchronisation point (__syncthreads, __syncwarp, a shuffle, a ballot) and then yield; the scheduler
 * resumes them in a configurable order (forward, reverse, shuffled), which exposes missing barriers:
 * WMMA stores are performed by lane 0 only, so a lane reading a tile before a __syncwarp sees stale data
 * under some order. Shared memory and the output are pre-filled with NaN bytes to expose reads of
 * unwritten data. A round in which no fiber can make progress aborts (deadlock = divergent barrier).
 *
 * Test-only code: not part of the plugin.
 */
#ifndef NAVIT_CUDA_EMU_H
#define NAVIT_CUDA_EMU_H

#define NAVIT_EMULATION 1

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <type_traits>
#include <ucontext.h>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define NAVIT_NEG_INF (-INFINITY)
#define NAVIT_UNROLL

struct dim3
{
    unsigned x = 1, y = 1, z = 1;
};

struct alignas(16) float4
{
    float x, y, z, w;
};

struct alignas(8) float2
{
    float x, y;
};

inline float4 make_float4(float x, float y, float z, float w)
{
    return float4{x, y, z, w};
}

using __half = _Float16;

struct alignas(4) __half2
{
    __half x, y;
};

inline float __half2float(__half h)
{
    return static_cast<float>(h);
}

inline __half __float2half_rn(float f)
{
    return static_cast<__half>(f); // round to nearest even
}

inline __half2 __floats2half2_rn(float a, float b)
{
    return __half2{static_cast<__half>(a), static_cast<__half>(b)};
}

namespace navit_emu
{

[[noreturn]] inline void fail(char const* msg)
{
    std::fprintf(stderr, "cuda_emu: %s\n", msg);
    std::fflush(stderr);
    std::abort();
}

struct Fiber
{
    ucontext_t ctx;
    std::vector<char> stack;
    bool done = false;
    bool waiting = false;
};

struct State
{
    dim3 bDim, gDim, bIdx;
    std::vector<Fiber> fibers;
    int current = -1;
    ucontext_t scheduler;
    uint64_t progress = 0; //!< bumped whenever a barrier releases or a fiber finishes
    int blockCount = 0;
    uint64_t blockGen = 0;
    std::vector<int> warpCount;
    std::vector<uint64_t> warpGen;
    std::vector<uint64_t> exchange; //!< one 64-bit slot per thread, for shuffles and ballots
    unsigned char* smem = nullptr;
    uint64_t warpCollectives = 0; //!< warp-wide shuffles and ballots executed (counted once per warp)
    void (*entry)(void*) = nullptr;
    void* entryArg = nullptr;
};

inline State& state()
{
    static State s;
    return s;
}

inline dim3 currentThreadIdx()
{
    return dim3{static_cast<unsigned>(state().current), 0U, 0U};
}

inline void yieldToScheduler()
{
    State& s = state();
    Fiber& f = s.fibers[static_cast<size_t>(s.current)];
    swapcontext(&f.ctx, &s.scheduler);
}

inline void waitFor(uint64_t const& generation, uint64_t seen)
{
    State& s = state();
    while (generation == seen)
    {
        s.fibers[static_cast<size_t>(s.current)].waiting = true;
        yieldToScheduler();
    }
    s.fibers[static_cast<size_t>(s.current)].waiting = false;
}

inline void blockBarrier()
{
    State& s = state();
    uint64_t const seen = s.blockGen;
    if (++s.blockCount == static_cast<int>(s.bDim.x))
    {
        s.blockCount = 0;
        ++s.blockGen;
        ++s.progress;
        return;
    }
    waitFor(s.blockGen, seen);
}

inline void warpBarrier()
{
    State& s = state();
    int const w = s.current / 32;
    uint64_t const seen = s.warpGen[static_cast<size_t>(w)];
    if (++s.warpCount[static_cast<size_t>(w)] == 32)
    {
        s.warpCount[static_cast<size_t>(w)] = 0;
        ++s.warpGen[static_cast<size_t>(w)];
        ++s.progress;
        return;
    }
    waitFor(s.warpGen[static_cast<size_t>(w)], seen);
}

//! Count one warp-wide operation (called by every lane; counted by lane 0).
inline void countCollective()
{
    State& s = state();
    if (s.current % 32 == 0)
    {
        ++s.warpCollectives;
    }
}

template <typename T>
T exchangeWith(T value, int srcLane)
{
    static_assert(sizeof(T) <= 8, "shuffle of a type larger than 8 bytes");
    State& s = state();
    countCollective();
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    s.exchange[static_cast<size_t>(s.current)] = bits;
    warpBarrier();
    uint64_t const other = s.exchange[static_cast<size_t>((s.current / 32) * 32 + srcLane)];
    warpBarrier();
    T result;
    std::memcpy(&result, &other, sizeof(T));
    return result;
}

inline void checkMask(unsigned mask)
{
    if (mask != 0xffffffffU)
    {
        fail("only full-warp masks are emulated");
    }
}

inline void fiberMain()
{
    State& s = state();
    s.entry(s.entryArg);
    s.fibers[static_cast<size_t>(s.current)].done = true;
    ++s.progress;
    swapcontext(&s.fibers[static_cast<size_t>(s.current)].ctx, &s.scheduler);
}

//! Run one block: `entry(arg)` on blockDim.x fibers, resumed in `order` (0 forward, 1 reverse, else
//! shuffled with that seed).
inline void runBlock(void (*entry)(void*), void* arg, int order)
{
    State& s = state();
    int const n = static_cast<int>(s.bDim.x);
    if (n % 32 != 0)
    {
        fail("blockDim.x must be a multiple of 32");
    }
    s.entry = entry;
    s.entryArg = arg;
    s.fibers.resize(static_cast<size_t>(n)); // stacks are kept from block to block (allocated once)
    s.blockCount = 0;
    s.warpCount.assign(static_cast<size_t>(n / 32), 0);
    s.warpGen.assign(static_cast<size_t>(n / 32), 0);
    s.exchange.assign(static_cast<size_t>(n), 0);
    for (int i = 0; i < n; ++i)
    {
        Fiber& f = s.fibers[static_cast<size_t>(i)];
        f.done = false;
        f.waiting = false;
        f.stack.resize(256 * 1024);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, &fiberMain, 0);
    }
    std::vector<int> seq(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i)
    {
        seq[static_cast<size_t>(i)] = order == 1 ? n - 1 - i : i;
    }
    if (order > 1)
    {
        std::mt19937 rng(static_cast<unsigned>(order));
        std::shuffle(seq.begin(), seq.end(), rng);
    }
    for (;;)
    {
        bool anyAlive = false;
        uint64_t const before = s.progress;
        for (int i : seq)
        {
            Fiber& f = s.fibers[static_cast<size_t>(i)];
            if (f.done)
            {
                continue;
            }
            anyAlive = true;
            s.current = i;
            swapcontext(&s.scheduler, &f.ctx);
        }
        if (!anyAlive)
        {
            break;
        }
        bool allWaiting = true;
        for (Fiber const& f : s.fibers)
        {
            allWaiting = allWaiting && (f.done || f.waiting);
        }
        if (allWaiting && s.progress == before)
        {
            fail("deadlock: threads wait at different barriers (divergent __syncthreads/__syncwarp/shuffle)");
        }
    }
    s.current = -1;
}

inline unsigned char* dynamicSmem()
{
    return state().smem;
}

} // namespace navit_emu

#define threadIdx (navit_emu::currentThreadIdx())
#define blockIdx (navit_emu::state().bIdx)
#define blockDim (navit_emu::state().bDim)
#define gridDim (navit_emu::state().gDim)
#define NAVIT_DYNAMIC_SMEM(name) unsigned char* name = navit_emu::dynamicSmem()

inline void __syncthreads()
{
    navit_emu::blockBarrier();
}

inline void __syncwarp(unsigned mask = 0xffffffffU)
{
    navit_emu::checkMask(mask);
    navit_emu::warpBarrier();
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int laneMask)
{
    navit_emu::checkMask(mask);
    return navit_emu::exchangeWith(value, (navit_emu::state().current % 32) ^ laneMask);
}

template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta)
{
    navit_emu::checkMask(mask);
    int const lane = navit_emu::state().current % 32;
    int const src = lane - static_cast<int>(delta);
    T const other = navit_emu::exchangeWith(value, src < 0 ? lane : src);
    return src < 0 ? value : other;
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int srcLane)
{
    navit_emu::checkMask(mask);
    return navit_emu::exchangeWith(value, srcLane & 31);
}

inline unsigned __ballot_sync(unsigned mask, bool predicate)
{
    navit_emu::checkMask(mask);
    navit_emu::State& s = navit_emu::state();
    navit_emu::countCollective();
    s.exchange[static_cast<size_t>(s.current)] = predicate ? 1U : 0U;
    navit_emu::warpBarrier();
    unsigned result = 0;
    int const base = (s.current / 32) * 32;
    for (int i = 0; i < 32; ++i)
    {
        result |= (s.exchange[static_cast<size_t>(base + i)] != 0U ? 1U : 0U) << i;
    }
    navit_emu::warpBarrier();
    return result;
}

inline int __popc(unsigned x)
{
    return __builtin_popcount(x);
}

#include "wmma_emu.h"

#endif // NAVIT_CUDA_EMU_H
