/*
 * CPU emulation of the nvcuda::wmma subset used by packedAttentionWmma.cuh (m16n16k16, half inputs, float
 * accumulator). Each lane holds the whole 16x16 tile (the real per-lane layout is opaque and never used
 * by the kernel). Loads/stores check the documented requirements (256-bit aligned pointer, ldm a multiple
 * of 16 bytes). Stores are done by lane 0 only, so reading a tile before __syncwarp is detectable.
 * Test-only code.
 */
#ifndef NAVIT_WMMA_EMU_H
#define NAVIT_WMMA_EMU_H

namespace nvcuda
{
namespace wmma
{

struct matrix_a
{
};
struct matrix_b
{
};
struct accumulator
{
};
struct row_major
{
};
struct col_major
{
};

enum layout_t
{
    mem_row_major,
    mem_col_major
};

//! Logical tile, element (r, c) at v[r * 16 + c], whatever the memory layout it was loaded from.
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment
{
    static_assert(M == 16 && N == 16 && K == 16, "only m16n16k16 is emulated");
    float v[256];
};

namespace detail
{
inline void checkPtr(void const* ptr, unsigned ldm, unsigned elemBytes)
{
    if ((reinterpret_cast<uintptr_t>(ptr) & 31U) != 0U)
    {
        navit_emu::fail("wmma pointer not 256-bit aligned");
    }
    if ((ldm * elemBytes) % 16U != 0U)
    {
        navit_emu::fail("wmma ldm not a multiple of 16 bytes");
    }
}

inline int lane()
{
    return navit_emu::state().current % 32;
}
} // namespace detail

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float value)
{
    for (float& x : f.v)
    {
        x = value;
    }
}

//! matrix_a: (row r, col k); matrix_b: (row k, col n). row_major: element (i, j) at p[i * ldm + j].
template <typename Use, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __half, Layout>& f, __half const* p, unsigned ldm)
{
    detail::checkPtr(p, ldm, 2);
    constexpr bool kRowMajor = std::is_same<Layout, row_major>::value;
    static_assert(kRowMajor || std::is_same<Layout, col_major>::value, "layout required for a/b fragments");
    for (int i = 0; i < 16; ++i)
    {
        for (int j = 0; j < 16; ++j)
        {
            __half const h = kRowMajor ? p[i * ldm + j] : p[j * ldm + i];
            f.v[i * 16 + j] = static_cast<float>(h);
        }
    }
}

inline void load_matrix_sync(
    fragment<accumulator, 16, 16, 16, float, void>& f, float const* p, unsigned ldm, layout_t layout)
{
    detail::checkPtr(p, ldm, 4);
    for (int i = 0; i < 16; ++i)
    {
        for (int j = 0; j < 16; ++j)
        {
            f.v[i * 16 + j] = layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
        }
    }
}

inline void store_matrix_sync(
    float* p, fragment<accumulator, 16, 16, 16, float, void> const& f, unsigned ldm, layout_t layout)
{
    detail::checkPtr(p, ldm, 4);
    if (detail::lane() != 0)
    {
        return;
    }
    for (int i = 0; i < 16; ++i)
    {
        for (int j = 0; j < 16; ++j)
        {
            (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.v[i * 16 + j];
        }
    }
}

template <typename LayoutA, typename LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float, void>& d,
    fragment<matrix_a, 16, 16, 16, __half, LayoutA> const& a, fragment<matrix_b, 16, 16, 16, __half, LayoutB> const& b,
    fragment<accumulator, 16, 16, 16, float, void> const& c)
{
    float tmp[256];
    for (int i = 0; i < 16; ++i)
    {
        for (int j = 0; j < 16; ++j)
        {
            float acc = c.v[i * 16 + j];
            for (int k = 0; k < 16; ++k)
            {
                acc += a.v[i * 16 + k] * b.v[k * 16 + j];
            }
            tmp[i * 16 + j] = acc;
        }
    }
    std::memcpy(d.v, tmp, sizeof(tmp));
}

} // namespace wmma
} // namespace nvcuda

#endif // NAVIT_WMMA_EMU_H
