/*
 * Status codes, algorithm choices and constants of NavitPackedAttention. No CUDA or TensorRT includes: shared by
 * the launcher, the C API, the plugin and the CPU emulation of the launch (tests/plugins/emu).
 */
#ifndef NAVIT_PACKED_ATTENTION_TYPES_H
#define NAVIT_PACKED_ATTENTION_TYPES_H

#include <stdint.h>

namespace navit
{

//! Return codes of launchPackedAttention (also returned by the C API).
enum PackedAttentionStatus : int32_t
{
    kPACKED_ATTENTION_OK = 0,
    kPACKED_ATTENTION_INVALID_ARGUMENT = 1,    //!< negative sizes, null pointers, bad numHeads
    kPACKED_ATTENTION_UNSUPPORTED_HEAD_DIM = 2, //!< headDim not in {32, 64, 128}
    kPACKED_ATTENTION_MISALIGNED = 3,          //!< a data pointer is not 16-byte aligned
    kPACKED_ATTENTION_CUDA_ERROR = 4,          //!< a CUDA runtime call or the kernel launch failed
    kPACKED_ATTENTION_NO_CONFIG = 5,           //!< no kernel configuration fits this device's shared memory
    kPACKED_ATTENTION_BAD_ALGO = 6,            //!< requested algorithm unavailable (e.g. tensor cores for fp32)
};

//! Kernel family. kAUTO picks tensor cores (WMMA) for fp16 on sm_70+, the FP32 SIMT kernel otherwise.
enum PackedAttentionAlgo : int32_t
{
    kPACKED_ATTENTION_ALGO_AUTO = 0,
    kPACKED_ATTENTION_ALGO_SIMT = 1,        //!< FP32 FMA kernel, fp32 and fp16 inputs
    kPACKED_ATTENTION_ALGO_TENSOR_CORE = 2, //!< WMMA fp16 x fp16 -> fp32 kernel, fp16 inputs only
};

//! Revision of the kernels' code. Part of the plugin's timing cache ID, so that timings cached for another
//! revision are not reused: bump it whenever a kernel, its tile choice or its launch changes.
constexpr int32_t kPACKED_ATTENTION_KERNEL_REVISION = 2;

//! True for the head dims the kernels are instantiated for.
inline bool isSupportedHeadDim(int32_t headDim)
{
    return headDim == 32 || headDim == 64 || headDim == 128;
}

} // namespace navit

#endif // NAVIT_PACKED_ATTENTION_TYPES_H
