/*
 * Creator, logging and registration of the NavitPackedAttention plugin libraries.
 *
 * This file is compiled into two libraries that differ only in NAVIT_STATIC_REGISTRATION:
 *  - libnavit_packed_attention_plugin.so (NAVIT_STATIC_REGISTRATION=0): registers nothing by itself. For
 *    IPluginRegistry::loadLibrary (`trt.get_plugin_registry().load_library`, `navit compile`, TensorRTRunner) and
 *    `trtexec --dynamicPlugins`: TensorRT dlopens the library, calls setLoggerFinder() and getCreators() and
 *    registers the returned creators itself. Nothing of ours touches the registry while loadLibrary runs.
 *  - libnavit_packed_attention_plugin_autoreg.so (NAVIT_STATIC_REGISTRATION=1): in addition, a static
 *    initializer registers the creator in the global registry when the library is loaded (what
 *    REGISTER_TENSORRT_PLUGIN does). For loaders that only dlopen: Polygraphy `--plugins` (ctypes.CDLL), ONNX
 *    Runtime's `trt_extra_plugin_lib_paths`, `trtexec --staticPlugins`. Set NAVIT_PLUGIN_NO_STATIC_REGISTRATION=1
 *    to turn the initializer off. If a creator of this plugin (from any file) is already registered, the
 *    initializer leaves it alone and registers nothing.
 *
 * Why two files: loadLibrary dlopens the library, so a static initializer would run inside loadLibrary and call
 * the registry from there (getCreator, registerCreator), which TensorRT does not document as allowed; and
 * loadLibrary "fails if any of the plugins are already registered" (NvInferRuntimeCommon.h). The autoreg
 * library, if passed to loadLibrary anyway, hands over: its getCreators() first deregisters the creator its
 * initializer registered (only that one: same object, same registry), so loadLibrary's own registration is not
 * a duplicate. That works where TensorRT tolerates registry calls during loadLibrary; the plain library needs
 * no such assumption.
 *
 * No link-time dependency on libnvinfer: getPluginRegistry()/getLogger() are looked up at run time with
 * dlsym, first in the global scope, then in an already-loaded libnvinfer (RTLD_NOLOAD), meant to cover the
 * TensorRT Python wheels, which load libnvinfer with RTLD_LOCAL; if TensorRT is not loaded yet, the static
 * initializer loads libnvinfer.so.<major> by soname when it is on the library search path (what a DT_NEEDED
 * entry would do, without making it a hard requirement). The object found must also define
 * createInferRuntime_INTERNAL and, when it exports getInferLibMajorVersion(), be of the major version of the
 * headers we were built with. If TensorRT is not loaded at all (e.g. the library is opened by a test),
 * nothing is registered and loading still succeeds. The plain library only uses the lookup to find a logger
 * when no ILoggerFinder was given, and never loads anything.
 */
#ifndef NAVIT_STATIC_REGISTRATION
#error "define NAVIT_STATIC_REGISTRATION to 0 (plain library) or 1 (autoreg library); see CMakeLists.txt"
#endif
#include "packedAttentionKernel.h"
#include "packedAttentionPlugin.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <string>

#define NAVIT_EXPORT __attribute__((visibility("default")))
#define NAVIT_STR2(x) #x
#define NAVIT_STR(x) NAVIT_STR2(x)

using namespace nvinfer1;

namespace navit
{
namespace plugin
{
namespace
{

//! Symbols of the TensorRT runtime library loaded in this process, found without linking against it.
struct TensorRTSymbols
{
    void* getPluginRegistry{nullptr};
    void* getLogger{nullptr};
};

//! Base address of the object that defines `sym` (nullptr if unknown).
void* objectBase(void* sym) noexcept
{
    Dl_info info{};
    return (sym != nullptr && dladdr(sym, &info) != 0) ? info.dli_fbase : nullptr;
}

//! Accept `registrySym` only if the object defining it looks like libnvinfer of our major version: it also
//! defines createInferRuntime_INTERNAL, and getInferLibMajorVersion() (when exported) matches the headers.
//! `lookup` resolves further names in the same scope. Guards against an unrelated "getPluginRegistry".
template <typename Lookup>
bool isTensorRTRuntime(void* registrySym, Lookup lookup) noexcept
{
    void* const base = objectBase(registrySym);
    void* const runtimeSym = lookup("createInferRuntime_INTERNAL");
    if (base == nullptr || runtimeSym == nullptr || objectBase(runtimeSym) != base)
    {
        return false;
    }
    void* const majorSym = lookup("getInferLibMajorVersion");
    if (majorSym != nullptr && objectBase(majorSym) == base)
    {
        int32_t const major = reinterpret_cast<int32_t (*)() noexcept>(majorSym)();
        if (major != NV_TENSORRT_MAJOR)
        {
            std::fprintf(stderr,
                "[NavitPackedAttention] built for TensorRT %d but TensorRT %d is loaded: not registering; rebuild the "
                "plugin against the headers of the TensorRT version you run\n",
                static_cast<int>(NV_TENSORRT_MAJOR), static_cast<int>(major));
            return false;
        }
    }
    return true;
}

//! Fills ``result`` from a dlopen handle when it is a real TensorRT runtime library (not a stub).
void takeSymbolsFrom(void* handle, TensorRTSymbols& result) noexcept
{
    void* sym = dlsym(handle, "getPluginRegistry");
    auto lookup = [handle](char const* name) { return dlsym(handle, name); };
    if (sym != nullptr && isTensorRTRuntime(sym, lookup))
    {
        result.getPluginRegistry = sym;
        void* logger = dlsym(handle, "getLogger");
        result.getLogger = objectBase(logger) == objectBase(sym) ? logger : nullptr;
    }
}

TensorRTSymbols findTensorRTSymbolsUncached(bool allowLoad) noexcept
{
    TensorRTSymbols result;
    // 1. Global scope: libnvinfer linked by the executable or loaded with RTLD_GLOBAL.
    if (void* sym = dlsym(RTLD_DEFAULT, "getPluginRegistry"))
    {
        auto lookup = [](char const* name) { return dlsym(RTLD_DEFAULT, name); };
        if (isTensorRTRuntime(sym, lookup))
        {
            result.getPluginRegistry = sym;
            void* logger = dlsym(RTLD_DEFAULT, "getLogger");
            result.getLogger = objectBase(logger) == objectBase(sym) ? logger : nullptr;
            return result;
        }
    }
    // 2. libnvinfer already loaded with RTLD_LOCAL (e.g. by the TensorRT Python wheel). RTLD_NOLOAD returns a
    //    handle only for a library that is already loaded; it never loads anything.
    static char const* const kLibraries[] = {
        "libnvinfer.so." NAVIT_STR(NV_TENSORRT_MAJOR),
        "libnvinfer.so",
        "libnvinfer_lean.so." NAVIT_STR(NV_TENSORRT_MAJOR),
    };
    for (char const* lib : kLibraries)
    {
        void* handle = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD);
        if (handle == nullptr)
        {
            continue;
        }
        takeSymbolsFrom(handle, result);
        dlclose(handle); // drops the reference RTLD_NOLOAD added; the library stays loaded
        if (result.getPluginRegistry != nullptr)
        {
            return result;
        }
    }
    // 3. TensorRT not loaded yet (e.g. Polygraphy imports tensorrt lazily, after loading plugins): load
    //    libnvinfer.so.<major> by soname, as a DT_NEEDED entry would. A later load of the same file (by soname,
    //    or by a path to the same file) reuses this copy, so the creator ends up in the process's registry.
    //    Kept loaded for the life of the process. Skipped when the library is not on the search path.
    void* handle = allowLoad ? dlopen("libnvinfer.so." NAVIT_STR(NV_TENSORRT_MAJOR), RTLD_LAZY | RTLD_LOCAL) : nullptr;
    if (handle != nullptr)
    {
        takeSymbolsFrom(handle, result);
    }
    return result;
}

//! Computed once. In the autoreg library the first call comes from the static initializer (allowLoad = true)
//! unless static registration is disabled; otherwise (and always in the plain library) the logger lookup makes
//! it, and it never loads anything.
TensorRTSymbols const& findTensorRTSymbols(bool allowLoad = false) noexcept
{
    static TensorRTSymbols const symbols = findTensorRTSymbolsUncached(allowLoad);
    return symbols;
}

using GetRegistryFn = IPluginRegistry* (*) () noexcept;
using GetLoggerFn = ILogger* (*) () noexcept;

std::mutex gMutex;
ILoggerFinder* gLoggerFinder{nullptr};
#if NAVIT_STATIC_REGISTRATION
IPluginRegistry* gStaticRegistry{nullptr}; //!< registry holding our static registration, if any
#endif

ILogger* currentLogger() noexcept
{
    ILoggerFinder* finder = nullptr;
    {
        std::lock_guard<std::mutex> lock(gMutex);
        finder = gLoggerFinder;
    }
    if (finder != nullptr)
    {
        try
        {
            if (ILogger* logger = finder->findLogger())
            {
                return logger;
            }
        }
        catch (...)
        {
        }
    }
    auto const getLoggerFn = reinterpret_cast<GetLoggerFn>(findTensorRTSymbols().getLogger);
    return getLoggerFn != nullptr ? getLoggerFn() : nullptr;
}

PackedAttentionPluginCreator& theCreator()
{
    static PackedAttentionPluginCreator creator;
    return creator;
}

#if NAVIT_STATIC_REGISTRATION
bool staticRegistrationDisabled() noexcept
{
    char const* env = std::getenv("NAVIT_PLUGIN_NO_STATIC_REGISTRATION");
    return env != nullptr && env[0] != '\0' && std::strcmp(env, "0") != 0;
}

//! Runs when the autoreg library is loaded (see the file comment).
struct StaticRegistration
{
    StaticRegistration() noexcept
    {
        if (staticRegistrationDisabled())
        {
            return;
        }
        auto const getRegistry = reinterpret_cast<GetRegistryFn>(findTensorRTSymbols(true).getPluginRegistry);
        IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
        if (registry == nullptr)
        {
            return; // not inside a TensorRT process
        }
        PackedAttentionPluginCreator& creator = theCreator();
        if (registry->getCreator(kPLUGIN_NAME, kPLUGIN_VERSION, kPLUGIN_NAMESPACE) != nullptr)
        {
            logMessage(ILogger::Severity::kVERBOSE, "already registered (another copy of the library); skipping");
            return;
        }
        if (registry->registerCreator(creator, kPLUGIN_NAMESPACE))
        {
            std::lock_guard<std::mutex> lock(gMutex);
            gStaticRegistry = registry;
        }
    }
};

StaticRegistration gStaticRegistration;
#endif // NAVIT_STATIC_REGISTRATION

bool readInt(PluginField const& f, int32_t& value)
{
    if (f.data == nullptr || f.length < 1)
    {
        return false;
    }
    int64_t v = 0;
    switch (f.type)
    {
    case PluginFieldType::kINT32: v = *static_cast<int32_t const*>(f.data); break;
    case PluginFieldType::kINT64: v = *static_cast<int64_t const*>(f.data); break;
    case PluginFieldType::kINT16: v = *static_cast<int16_t const*>(f.data); break;
    case PluginFieldType::kINT8: v = *static_cast<int8_t const*>(f.data); break;
    default: return false;
    }
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
    {
        return false;
    }
    value = static_cast<int32_t>(v);
    return true;
}

bool readFloat(PluginField const& f, float& value)
{
    if (f.data == nullptr || f.length < 1)
    {
        return false;
    }
    switch (f.type)
    {
    case PluginFieldType::kFLOAT32: value = *static_cast<float const*>(f.data); return true;
    case PluginFieldType::kFLOAT64: value = static_cast<float>(*static_cast<double const*>(f.data)); return true;
    default: return false;
    }
}

} // namespace

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const text = std::string("[NavitPackedAttention] ") + message;
        if (ILogger* logger = currentLogger())
        {
            logger->log(severity, text.c_str());
        }
        else if (severity == ILogger::Severity::kERROR || severity == ILogger::Severity::kINTERNAL_ERROR
            || severity == ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    }
    catch (...)
    {
    }
}

void logError(std::string const& message) noexcept
{
    logMessage(ILogger::Severity::kERROR, message);
}

PackedAttentionPluginCreator::PackedAttentionPluginCreator()
{
    mFieldNames.emplace_back("num_heads", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("head_dim", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("scale", nullptr, PluginFieldType::kFLOAT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* PackedAttentionPluginCreator::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* PackedAttentionPluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* PackedAttentionPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* PackedAttentionPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* PackedAttentionPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    std::string const layer = name != nullptr ? name : "<unnamed>";
    try
    {
        if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
        {
            logError("createPlugin(" + layer + "): no plugin fields given; num_heads and head_dim are required");
            return nullptr;
        }
        int32_t numHeads = -1;
        int32_t headDim = -1;
        float scale = 0.F;
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            if (f.name == nullptr)
            {
                continue;
            }
            bool ok = true;
            if (std::strcmp(f.name, "num_heads") == 0)
            {
                ok = readInt(f, numHeads);
            }
            else if (std::strcmp(f.name, "head_dim") == 0)
            {
                ok = readInt(f, headDim);
            }
            else if (std::strcmp(f.name, "scale") == 0)
            {
                ok = readFloat(f, scale);
            }
            else
            {
                logMessage(ILogger::Severity::kVERBOSE, "createPlugin(" + layer + "): ignoring field " + f.name);
            }
            if (!ok)
            {
                logError("createPlugin(" + layer + "): field " + f.name
                    + " has an unsupported type or no data (num_heads/head_dim: int32, scale: float32)");
                return nullptr;
            }
        }
        if (numHeads < 0 || headDim < 0)
        {
            logError("createPlugin(" + layer + "): num_heads and head_dim are required fields");
            return nullptr;
        }
        return std::make_unique<PackedAttentionPlugin>(numHeads, headDim, scale).release();
    }
    catch (std::exception const& e)
    {
        logError("createPlugin(" + layer + "): " + e.what());
    }
    catch (...)
    {
        logError("createPlugin(" + layer + "): unknown error");
    }
    return nullptr;
}

} // namespace plugin
} // namespace navit

extern "C"
{

    //! Called by IPluginRegistry::loadLibrary before getCreators().
    NAVIT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> lock(navit::plugin::gMutex);
        navit::plugin::gLoggerFinder = finder;
    }

    //! Creators of this library, for IPluginRegistry::loadLibrary (which registers them itself).
    NAVIT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
    {
        using namespace navit::plugin;
#if NAVIT_STATIC_REGISTRATION
        IPluginRegistry* registry = nullptr;
        {
            std::lock_guard<std::mutex> lock(gMutex);
            registry = gStaticRegistry;
            gStaticRegistry = nullptr;
        }
        if (registry != nullptr)
        {
            // Undo our load-time registration so that the caller's registration does not fail as a duplicate.
            registry->deregisterCreator(theCreator());
        }
#endif
        static nvinfer1::IPluginCreatorInterface* const kCreators[] = {&theCreator()};
        nbCreators = 1;
        return kCreators;
    }

} // extern "C"
