/*
 * TensorRT IPluginV3 wrapper of NavitPackedAttention (kernel: packedAttentionKernel.h).
 *
 *   name "NavitPackedAttention", version "1", namespace "navit"
 *   inputs : q, k, v [T, num_heads*head_dim] float32|float16 (same dtype), cu_seqlens [B+1] int32
 *   output : [T, num_heads*head_dim], dtype of q
 *   fields : num_heads (int32, required), head_dim (int32 in {32, 64, 128}, required),
 *            scale (float32, optional; 0 or absent = 1/sqrt(head_dim))
 *
 * Builds against TensorRT 10.x and 11.x headers (the IPluginV3One* interfaces used here are identical in
 * both). Only virtual interfaces of TensorRT are called, so the library has no link-time dependency on
 * libnvinfer; see packedAttentionRegistration.cpp for how the registry and the logger are found.
 */
#ifndef NAVIT_PACKED_ATTENTION_PLUGIN_H
#define NAVIT_PACKED_ATTENTION_PLUGIN_H

#include "NvInferRuntime.h"

#include <cstdint>
#include <string>
#include <vector>

namespace navit
{
namespace plugin
{

constexpr char const* kPLUGIN_NAME = "NavitPackedAttention";
constexpr char const* kPLUGIN_VERSION = "1";
constexpr char const* kPLUGIN_NAMESPACE = "navit";
constexpr int32_t kNUM_INPUTS = 4;
constexpr int32_t kNUM_OUTPUTS = 1;

//! Log through TensorRT's logger (ILoggerFinder from setLoggerFinder, else libnvinfer's getLogger()),
//! falling back to stderr for warnings and errors. Never throws.
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;
void logError(std::string const& message) noexcept;

class PackedAttentionPlugin : public nvinfer1::IPluginV3,
                              public nvinfer1::IPluginV3OneCore,
                              public nvinfer1::IPluginV3OneBuild,
                              public nvinfer1::IPluginV3OneRuntime
{
public:
    //! Throws std::invalid_argument for unsupported values (the creator reports it).
    PackedAttentionPlugin(int32_t numHeads, int32_t headDim, float scale);
    PackedAttentionPlugin(PackedAttentionPlugin const& other);
    PackedAttentionPlugin& operator=(PackedAttentionPlugin const&) = delete;
    ~PackedAttentionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getMetadataString() noexcept override;
    //! Suffix of the timing cache key: the fields that change which kernel runs (num_heads, head_dim) and the
    //! kernel revision. TensorRT prefixes it with the I/O shapes and formats (dtype included). `scale` does not
    //! change the kernel or its timing, so plugins that differ only in scale share timings.
    char const* getTimingCacheID() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Checks dtypes (q float/half, k and v like q, cu_seqlens int32); logs and returns false on mismatch.
    bool checkTypes(nvinfer1::DataType const* inputTypes, int32_t nbInputs, char const* where) const noexcept;
    //! Checks ranks and static widths; logs and returns false on mismatch.
    bool checkDims(nvinfer1::Dims const* dims, int32_t nbDims, char const* where) const noexcept;

    int32_t mNumHeads;
    int32_t mHeadDim;
    float mScale; //!< as given; 0 means 1/sqrt(head_dim) (resolved by the launcher)
    std::string mMetadata;
    std::string mTimingCacheId;
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class PackedAttentionPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    PackedAttentionPluginCreator();
    ~PackedAttentionPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace navit

#endif // NAVIT_PACKED_ATTENTION_PLUGIN_H
