/*
 * Memory-safety driver for the emulated kernels: run under AddressSanitizer with buffers of the exact size,
 * including invalid cu_seqlens (decreasing, negative, beyond the token count) and empty packs.
 * Built and run by tests/plugins/test_packed_attention_emulation.py. Prints "OK" on success. Test-only code.
 */
#include <cstdint>
#include <cstdio>
#include <vector>

extern "C" int32_t navitEmuRun(void const* q, void const* k, void const* v, int32_t const* cuSeqlens, void* out,
    int32_t totalTokens, int32_t numSeqs, int32_t numHeads, int32_t headDim, float scale, int32_t isFp16,
    int32_t algo, int32_t configIndex, int32_t order);
extern "C" int32_t navitEmuNumConfigs(int32_t algo, int32_t isFp16, int32_t headDim);

int main()
{
    std::vector<std::vector<int32_t>> cases = {{0, 30, 10, 1000}, {0, -5, 20}, {7, 3}, {0, 40}, {0, 1, 1, 2, 40},
        {0}, {1000, 2000}, {0, 0, 0}};
    int32_t const total = 40;
    int32_t const heads = 2;
    for (int32_t headDim : {32, 64, 128})
    {
        size_t const n = static_cast<size_t>(total) * heads * headDim;
        std::vector<float> qf(n, 0.5F);
        std::vector<float> outf(n);
        std::vector<_Float16> qh(n, static_cast<_Float16>(0.5F));
        std::vector<_Float16> outh(n);
        for (auto const& cu : cases)
        {
            int32_t const seqs = static_cast<int32_t>(cu.size()) - 1;
            for (int32_t algo : {1, 2})
            {
                for (int32_t fp16 : {0, 1})
                {
                    if (algo == 2 && fp16 == 0)
                    {
                        continue;
                    }
                    for (int32_t c = 0; c < navitEmuNumConfigs(algo, fp16, headDim); ++c)
                    {
                        // Fresh heap copies of exactly the right size so that ASan sees any overflow.
                        std::vector<int32_t> cuCopy(cu);
                        void const* in = fp16 ? static_cast<void const*>(qh.data()) : qf.data();
                        void* out = fp16 ? static_cast<void*>(outh.data()) : outf.data();
                        if (navitEmuRun(in, in, in, cuCopy.data(), out, total, seqs, heads, headDim, 0.F, fp16, algo,
                                c, 0)
                            != 0)
                        {
                            std::printf("FAIL: run error\n");
                            return 1;
                        }
                    }
                }
            }
        }
    }
    std::printf("OK\n");
    return 0;
}
