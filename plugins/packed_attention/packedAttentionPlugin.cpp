/*
 * IPluginV3 implementation of NavitPackedAttention. See packedAttentionPlugin.h.
 */
#include "packedAttentionPlugin.h"

#include "packedAttentionKernel.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>

using namespace nvinfer1;

namespace navit
{
namespace plugin
{
namespace
{

char const* dataTypeName(DataType t) noexcept
{
    switch (t)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kINT8: return "int8";
    case DataType::kBOOL: return "bool";
    case DataType::kBF16: return "bfloat16";
    default: return "unsupported";
    }
}

char const* const kInputNames[kNUM_INPUTS] = {"q", "k", "v", "cu_seqlens"};

} // namespace

PackedAttentionPlugin::PackedAttentionPlugin(int32_t numHeads, int32_t headDim, float scale)
    : mNumHeads(numHeads)
    , mHeadDim(headDim)
    , mScale(scale)
{
    if (numHeads <= 0 || numHeads > 65535)
    {
        throw std::invalid_argument("num_heads must be in [1, 65535], got " + std::to_string(numHeads));
    }
    if (!isSupportedHeadDim(headDim))
    {
        throw std::invalid_argument("head_dim must be 32, 64 or 128, got " + std::to_string(headDim));
    }
    if (!std::isfinite(scale))
    {
        throw std::invalid_argument("scale must be finite (0 means 1/sqrt(head_dim))");
    }
    std::ostringstream meta;
    meta << "num_heads=" << numHeads << " head_dim=" << headDim << " scale=" << scale;
    mMetadata = meta.str();
    mTimingCacheId = std::string(kPLUGIN_NAME) + "/kernel_rev=" + std::to_string(kPACKED_ATTENTION_KERNEL_REVISION)
        + "/num_heads=" + std::to_string(numHeads) + "/head_dim=" + std::to_string(headDim);
}

PackedAttentionPlugin::PackedAttentionPlugin(PackedAttentionPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mNumHeads(other.mNumHeads)
    , mHeadDim(other.mHeadDim)
    , mScale(other.mScale)
    , mMetadata(other.mMetadata)
    , mTimingCacheId(other.mTimingCacheId)
{
    // mSerialFields points into `other`; it is rebuilt by getFieldsToSerialize().
}

IPluginCapability* PackedAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* PackedAttentionPlugin::clone() noexcept
{
    try
    {
        return std::make_unique<PackedAttentionPlugin>(*this).release();
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* PackedAttentionPlugin::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* PackedAttentionPlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* PackedAttentionPlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t PackedAttentionPlugin::getNbOutputs() const noexcept
{
    return kNUM_OUTPUTS;
}

bool PackedAttentionPlugin::checkTypes(DataType const* types, int32_t nbInputs, char const* where) const noexcept
{
    try
    {
        if (types == nullptr || nbInputs != kNUM_INPUTS)
        {
            logError(std::string(where) + ": expected 4 inputs (q, k, v, cu_seqlens), got " + std::to_string(nbInputs));
            return false;
        }
        if (types[0] != DataType::kFLOAT && types[0] != DataType::kHALF)
        {
            logError(std::string(where) + ": q must be float32 or float16, got " + dataTypeName(types[0]));
            return false;
        }
        for (int32_t i = 1; i < 3; ++i)
        {
            if (types[i] != types[0])
            {
                logError(std::string(where) + ": " + kInputNames[i] + " is " + dataTypeName(types[i]) + " but q is "
                    + dataTypeName(types[0]) + "; q, k and v must have the same dtype");
                return false;
            }
        }
        if (types[3] != DataType::kINT32)
        {
            logError(std::string(where) + ": cu_seqlens must be int32, got " + dataTypeName(types[3])
                + " (cast it to int32 in the graph)");
            return false;
        }
        return true;
    }
    catch (...)
    {
        return false;
    }
}

bool PackedAttentionPlugin::checkDims(Dims const* dims, int32_t nbDims, char const* where) const noexcept
{
    try
    {
        if (dims == nullptr || nbDims != kNUM_INPUTS)
        {
            logError(std::string(where) + ": expected 4 inputs, got " + std::to_string(nbDims));
            return false;
        }
        int64_t const width = static_cast<int64_t>(mNumHeads) * mHeadDim;
        for (int32_t i = 0; i < 3; ++i)
        {
            if (dims[i].nbDims != 2)
            {
                logError(std::string(where) + ": " + kInputNames[i] + " must be 2-D [tokens, num_heads*head_dim], got "
                    + std::to_string(dims[i].nbDims) + "-D");
                return false;
            }
            if (dims[i].d[1] >= 0 && dims[i].d[1] != width)
            {
                logError(std::string(where) + ": " + kInputNames[i] + " has width " + std::to_string(dims[i].d[1])
                    + " but num_heads*head_dim = " + std::to_string(width));
                return false;
            }
            if (i > 0 && dims[i].d[0] >= 0 && dims[0].d[0] >= 0 && dims[i].d[0] != dims[0].d[0])
            {
                logError(std::string(where) + ": q, k and v must have the same number of tokens");
                return false;
            }
        }
        if (dims[3].nbDims != 1)
        {
            logError(std::string(where) + ": cu_seqlens must be 1-D [num_images + 1], got "
                + std::to_string(dims[3].nbDims) + "-D");
            return false;
        }
        return true;
    }
    catch (...)
    {
        return false;
    }
}

int32_t PackedAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || nbOutputs != kNUM_OUTPUTS || !checkTypes(inputTypes, nbInputs, "getOutputDataTypes"))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t PackedAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        if (inputs == nullptr || outputs == nullptr || nbInputs != kNUM_INPUTS || nbOutputs != kNUM_OUTPUTS)
        {
            logError("getOutputShapes: expected 4 inputs and 1 output");
            return -1;
        }
        int64_t const width = static_cast<int64_t>(mNumHeads) * mHeadDim;
        for (int32_t i = 0; i < 3; ++i)
        {
            if (inputs[i].nbDims != 2)
            {
                logError(std::string("getOutputShapes: ") + kInputNames[i]
                    + " must be 2-D [tokens, num_heads*head_dim], got " + std::to_string(inputs[i].nbDims) + "-D");
                return -1;
            }
            IDimensionExpr const* w = inputs[i].d[1];
            if (w != nullptr && w->isConstant() && w->getConstantValue() != width)
            {
                logError(std::string("getOutputShapes: ") + kInputNames[i] + " has width "
                    + std::to_string(w->getConstantValue()) + " but num_heads*head_dim = " + std::to_string(width));
                return -1;
            }
        }
        if (inputs[3].nbDims != 1)
        {
            logError("getOutputShapes: cu_seqlens must be 1-D [num_images + 1]");
            return -1;
        }
        outputs[0] = inputs[0];
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

bool PackedAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNUM_INPUTS || nbOutputs != kNUM_OUTPUTS || pos < 0
        || pos >= kNUM_INPUTS + kNUM_OUTPUTS)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    case 3: return desc.type == DataType::kINT32;
    default: return desc.type == inOut[0].desc.type; // k, v and the output follow q
    }
}

int32_t PackedAttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNUM_INPUTS || nbOutputs != kNUM_OUTPUTS)
    {
        logError("configurePlugin: expected 4 inputs and 1 output");
        return -1;
    }
    DataType types[kNUM_INPUTS];
    Dims dims[kNUM_INPUTS];
    Dims maxDims[kNUM_INPUTS];
    for (int32_t i = 0; i < kNUM_INPUTS; ++i)
    {
        types[i] = in[i].desc.type;
        dims[i] = in[i].desc.dims;
        maxDims[i] = in[i].max;
    }
    if (!checkTypes(types, nbInputs, "configurePlugin") || !checkDims(dims, nbInputs, "configurePlugin"))
    {
        return -1;
    }
    // Dynamic widths: the whole range must be num_heads*head_dim.
    if (!checkDims(maxDims, nbInputs, "configurePlugin (max profile dims)"))
    {
        return -1;
    }
    if (out[0].desc.type != types[0])
    {
        logError("configurePlugin: output dtype must equal the dtype of q");
        return -1;
    }
    return 0;
}

size_t PackedAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

char const* PackedAttentionPlugin::getMetadataString() noexcept
{
    return mMetadata.c_str();
}

char const* PackedAttentionPlugin::getTimingCacheID() noexcept
{
    return mTimingCacheId.c_str();
}

int32_t PackedAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNUM_INPUTS || nbOutputs != kNUM_OUTPUTS)
    {
        logError("onShapeChange: expected 4 inputs and 1 output");
        return -1;
    }
    Dims dims[kNUM_INPUTS];
    DataType types[kNUM_INPUTS];
    for (int32_t i = 0; i < kNUM_INPUTS; ++i)
    {
        dims[i] = in[i].dims;
        types[i] = in[i].type;
    }
    if (!checkTypes(types, nbInputs, "onShapeChange") || !checkDims(dims, nbInputs, "onShapeChange"))
    {
        return -1;
    }
    if (dims[3].d[0] < 1)
    {
        logError("onShapeChange: cu_seqlens must have at least one element");
        return -1;
    }
    return 0;
}

int32_t PackedAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    int64_t const totalTokens = inputDesc[0].dims.d[0];
    int64_t const numSeqs = inputDesc[3].dims.d[0] - 1;
    if (totalTokens < 0 || totalTokens > std::numeric_limits<int32_t>::max() || numSeqs < 0
        || numSeqs > std::numeric_limits<int32_t>::max())
    {
        logError("enqueue: unsupported sizes (tokens must fit in int32, cu_seqlens must be non-empty)");
        return -1;
    }
    int const status = launchPackedAttention(inputs[0], inputs[1], inputs[2], static_cast<int32_t const*>(inputs[3]),
        outputs[0], static_cast<int32_t>(totalTokens), static_cast<int32_t>(numSeqs), mNumHeads, mHeadDim, mScale,
        inputDesc[0].type == DataType::kHALF, stream);
    if (status != kPACKED_ATTENTION_OK)
    {
        logError(std::string("enqueue: kernel launch failed: ") + packedAttentionStatusString(status));
        return -1;
    }
    return 0;
}

IPluginV3* PackedAttentionPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* PackedAttentionPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mSerialFields.clear();
        mSerialFields.emplace_back("num_heads", &mNumHeads, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back("head_dim", &mHeadDim, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back("scale", &mScale, PluginFieldType::kFLOAT32, 1);
        mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialCollection.fields = mSerialFields.data();
        return &mSerialCollection;
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace plugin
} // namespace navit
