/*
 * A stand-in for a TensorRT process, to test the NavitPackedAttention plugin libraries without TensorRT libraries
 * or a GPU. Compiled against real TensorRT headers (10.x or 11.x) and linked with -rdynamic, so that the
 * plugin's dlsym(RTLD_DEFAULT, "getPluginRegistry"/"getLogger") finds the mock registry and logger below.
 *
 * MockRegistry::loadLibrary follows the documented contract of IPluginRegistry::loadLibrary: dlopen, call
 * setLoggerFinder and getCreators, fail if any creator is already registered, otherwise register them. With
 * --strict it also plays a TensorRT that holds its registry lock for the whole of loadLibrary: any registry call
 * made while loadLibrary runs (e.g. from a static initializer of the library being loaded) is refused and counted.
 *
 *   plugin_host_mock [--strict] MODE LIB [LIB2]
 *   MODE: dlopen-registers  dlopen LIB: exactly one creator is registered (the autoreg library)
 *         dlopen-silent     dlopen LIB: nothing is registered (plain library; autoreg with
 *                           NAVIT_PLUGIN_NO_STATIC_REGISTRATION=1 or MOCK_TRT_MAJOR=<other major>)
 *         plugin            dlopen LIB (autoreg), then exercise the plugin, logging through getLogger()
 *         loadlibrary       loadLibrary(LIB) succeeds with one creator; exercise the plugin (ILoggerFinder)
 *         dlopen-then-load  dlopen LIB, then loadLibrary(LIB) succeeds; one creator
 *         load-then-dlopen  loadLibrary(LIB), then dlopen LIB; still the one creator loadLibrary registered
 *         autoreg-then-plain  dlopen LIB (autoreg), then loadLibrary(LIB2 = plain) fails as a duplicate and the
 *                           autoreg creator stays the only one
 *         plain-then-autoreg  loadLibrary(LIB = plain), then dlopen LIB2 (autoreg): its initializer registers
 *                           nothing, the plain creator stays the only one
 * Prints "OK" and exits 0 on success; prints "FAIL: ..." and exits 1 otherwise. Test-only code.
 */
#include "NvInferRuntime.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

using namespace nvinfer1;

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            std::printf("FAIL: %s (line %d)\n", #cond, __LINE__);                                                      \
            std::exit(1);                                                                                              \
        }                                                                                                              \
    } while (0)

namespace
{

class MockLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        messages.emplace_back(msg);
        if (severity <= Severity::kWARNING)
        {
            lastError = msg;
        }
    }
    bool sawError(char const* needle) const
    {
        return lastError.find(needle) != std::string::npos;
    }
    std::vector<std::string> messages;
    std::string lastError;
};

MockLogger gLogger;

class MockLoggerFinder : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        return &gLogger;
    }
};

MockLoggerFinder gFinder;

IPluginCreatorV3One* asV3(IPluginCreatorInterface* c)
{
    return std::strcmp(c->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0 ? static_cast<IPluginCreatorV3One*>(c)
                                                                               : nullptr;
}

class MockRegistry : public IPluginRegistry
{
public:
    std::vector<IPluginCreatorInterface*> creators;
    bool strict{false};     //!< refuse registry calls made while loadLibrary runs
    int loading{0};         //!< > 0 while loadLibrary runs
    int reentrantCalls{0};  //!< registry calls made while loadLibrary ran

    //! True when a call must be refused (strict mode, inside loadLibrary).
    bool refuseReentrant()
    {
        if (loading == 0)
        {
            return false;
        }
        ++reentrantCalls;
        return strict;
    }

    IPluginCreatorInterface* find(char const* name, char const* version, char const* ns)
    {
        for (IPluginCreatorInterface* c : creators)
        {
            IPluginCreatorV3One* v3 = asV3(c);
            if (v3 != nullptr && std::strcmp(v3->getPluginName(), name) == 0
                && std::strcmp(v3->getPluginVersion(), version) == 0 && std::strcmp(v3->getPluginNamespace(), ns) == 0)
            {
                return c;
            }
        }
        return nullptr;
    }

#if NV_TENSORRT_MAJOR < 11
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override
    {
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override
    {
        return false;
    }
#else
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override
    {
        return getAllCreators(n);
    }
#endif
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const* path) noexcept override
    {
        ++loading;
        PluginLibraryHandle handle = loadLibraryLocked(path);
        --loading;
        return handle;
    }
    PluginLibraryHandle loadLibraryLocked(AsciiChar const* path) noexcept
    {
        void* handle = dlopen(path, RTLD_LAZY | RTLD_LOCAL);
        if (handle == nullptr)
        {
            return nullptr;
        }
        auto setFinder = reinterpret_cast<void (*)(ILoggerFinder*)>(dlsym(handle, "setLoggerFinder"));
        auto get = reinterpret_cast<IPluginCreatorInterface* const* (*) (int32_t&)>(dlsym(handle, "getCreators"));
        if (setFinder == nullptr || get == nullptr)
        {
            return nullptr;
        }
        setFinder(&gFinder);
        int32_t n = 0;
        IPluginCreatorInterface* const* list = get(n);
        for (int32_t i = 0; i < n; ++i)
        {
            IPluginCreatorV3One* v3 = asV3(list[i]);
            if (v3 == nullptr || find(v3->getPluginName(), v3->getPluginVersion(), v3->getPluginNamespace()) != nullptr)
            {
                return nullptr; // "fails if any of the plugins are already registered"
            }
        }
        for (int32_t i = 0; i < n; ++i)
        {
            creators.push_back(list[i]);
        }
        return handle;
    }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const) noexcept override
    {
        if (refuseReentrant())
        {
            return false;
        }
        IPluginCreatorV3One* v3 = asV3(&creator);
        if (v3 == nullptr || find(v3->getPluginName(), v3->getPluginVersion(), v3->getPluginNamespace()) != nullptr)
        {
            return false;
        }
        creators.push_back(&creator);
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = static_cast<int32_t>(creators.size());
        return creators.data();
    }
    IPluginCreatorInterface* getCreator(
        AsciiChar const* const name, AsciiChar const* const version, AsciiChar const* const ns) noexcept override
    {
        return refuseReentrant() ? nullptr : find(name, version, ns);
    }
    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override
    {
        if (refuseReentrant())
        {
            return false;
        }
        for (auto it = creators.begin(); it != creators.end(); ++it)
        {
            if (*it == &creator)
            {
                creators.erase(it);
                return true;
            }
        }
        return false;
    }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const*) noexcept override
    {
        return 0;
    }
};

MockRegistry gRegistry;

} // namespace

extern "C" IPluginRegistry* getPluginRegistry() noexcept
{
    return &gRegistry;
}

extern "C" ILogger* getLogger() noexcept
{
    return &gLogger;
}

// The plugin only trusts a "getPluginRegistry" whose object also defines these (like libnvinfer does).
extern "C" void* createInferRuntime_INTERNAL(void* /*logger*/, int32_t /*version*/) noexcept
{
    return nullptr;
}

extern "C" int32_t getInferLibMajorVersion() noexcept
{
    char const* forced = std::getenv("MOCK_TRT_MAJOR"); // "wrongmajor" mode: pretend another TensorRT
    return forced != nullptr ? std::atoi(forced) : NV_TENSORRT_MAJOR;
}

namespace
{

Dims dims2(int64_t a, int64_t b)
{
    Dims d{};
    d.nbDims = 2;
    d.d[0] = a;
    d.d[1] = b;
    return d;
}

Dims dims1(int64_t a)
{
    Dims d{};
    d.nbDims = 1;
    d.d[0] = a;
    return d;
}

IPluginV3* create(IPluginCreatorV3One* c, int32_t heads, int32_t headDim, float scale, TensorRTPhase phase)
{
    PluginField fields[3] = {PluginField("num_heads", &heads, PluginFieldType::kINT32, 1),
        PluginField("head_dim", &headDim, PluginFieldType::kINT32, 1),
        PluginField("scale", &scale, PluginFieldType::kFLOAT32, 1)};
    PluginFieldCollection fc{3, fields};
    return c->createPlugin("layer", &fc, phase);
}

std::string timingCacheId(IPluginV3* plugin)
{
    CHECK(plugin != nullptr);
    auto* b = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    char const* id = b->getTimingCacheID();
    CHECK(id != nullptr && id[0] != '\0'); // nullptr would disable timing caching for the plugin altogether
    std::string result = id;
    delete plugin;
    return result;
}

//! The timing cache ID is set, depends on the fields that change the kernel (num_heads, head_dim) and not on
//! scale, and survives clone().
void checkTimingCacheId(IPluginCreatorV3One* creator, IPluginV3OneBuild* build)
{
    std::string const id = build->getTimingCacheID();
    CHECK(id.find("num_heads=2") != std::string::npos && id.find("head_dim=64") != std::string::npos);
    CHECK(timingCacheId(create(creator, 2, 128, 0.F, TensorRTPhase::kBUILD)) != id);
    CHECK(timingCacheId(create(creator, 4, 64, 0.F, TensorRTPhase::kBUILD)) != id);
    CHECK(timingCacheId(create(creator, 2, 64, 0.5F, TensorRTPhase::kBUILD)) == id);
    IPluginV3* original = create(creator, 2, 64, 0.F, TensorRTPhase::kBUILD);
    CHECK(original != nullptr);
    CHECK(timingCacheId(original->clone()) == id);
    delete original;
}

void exercisePlugin(IPluginCreatorV3One* creator)
{
    CHECK(std::strcmp(creator->getPluginName(), "NavitPackedAttention") == 0);
    CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(creator->getPluginNamespace(), "navit") == 0);
    PluginFieldCollection const* names = creator->getFieldNames();
    CHECK(names != nullptr && names->nbFields == 3);
    CHECK(std::strcmp(names->fields[0].name, "num_heads") == 0 && names->fields[0].type == PluginFieldType::kINT32);
    CHECK(std::strcmp(names->fields[1].name, "head_dim") == 0 && names->fields[1].type == PluginFieldType::kINT32);
    CHECK(std::strcmp(names->fields[2].name, "scale") == 0 && names->fields[2].type == PluginFieldType::kFLOAT32);

    // Rejected configurations report an error instead of producing a plugin.
    CHECK(create(creator, 2, 48, 0.F, TensorRTPhase::kBUILD) == nullptr && gLogger.sawError("head_dim"));
    CHECK(create(creator, 0, 64, 0.F, TensorRTPhase::kBUILD) == nullptr && gLogger.sawError("num_heads"));
    CHECK(create(creator, 2, 64, NAN, TensorRTPhase::kBUILD) == nullptr && gLogger.sawError("scale"));
    PluginFieldCollection empty{0, nullptr};
    CHECK(creator->createPlugin("x", &empty, TensorRTPhase::kBUILD) == nullptr && gLogger.sawError("required"));

    IPluginV3* plugin = create(creator, 2, 64, 0.F, TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(core != nullptr && build != nullptr && runtime != nullptr);
    CHECK(std::strcmp(core->getPluginName(), "NavitPackedAttention") == 0);
    CHECK(std::strcmp(core->getPluginNamespace(), "navit") == 0);
    CHECK(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
    CHECK(build->getNbOutputs() == 1);

    DataType out{};
    DataType const good[4] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kINT32};
    CHECK(build->getOutputDataTypes(&out, 1, good, 4) == 0 && out == DataType::kHALF);
    DataType const mixed[4] = {DataType::kFLOAT, DataType::kHALF, DataType::kFLOAT, DataType::kINT32};
    CHECK(build->getOutputDataTypes(&out, 1, mixed, 4) != 0 && gLogger.sawError("same dtype"));
    DataType const cu64[4] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT64};
    CHECK(build->getOutputDataTypes(&out, 1, cu64, 4) != 0 && gLogger.sawError("int32"));
    DataType const bf16[4] = {DataType::kBF16, DataType::kBF16, DataType::kBF16, DataType::kINT32};
    CHECK(build->getOutputDataTypes(&out, 1, bf16, 4) != 0);

    DynamicPluginTensorDesc io[5]{};
    for (int i = 0; i < 5; ++i)
    {
        io[i].desc.format = TensorFormat::kLINEAR;
        io[i].desc.type = DataType::kFLOAT;
        io[i].desc.dims = i == 3 ? dims1(-1) : dims2(-1, 128);
        io[i].min = i == 3 ? dims1(2) : dims2(1, 128);
        io[i].max = i == 3 ? dims1(65) : dims2(4096, 128);
        io[i].opt = io[i].max;
    }
    io[3].desc.type = DataType::kINT32;
    CHECK(build->supportsFormatCombination(0, io, 4, 1));
    CHECK(build->supportsFormatCombination(3, io, 4, 1));
    CHECK(build->supportsFormatCombination(4, io, 4, 1));
    io[1].desc.type = DataType::kHALF;
    CHECK(!build->supportsFormatCombination(1, io, 4, 1));
    io[1].desc.type = DataType::kFLOAT;
    io[3].desc.type = DataType::kINT64;
    CHECK(!build->supportsFormatCombination(3, io, 4, 1));
    io[3].desc.type = DataType::kINT32;
    io[0].desc.format = TensorFormat::kCHW32;
    CHECK(!build->supportsFormatCombination(0, io, 4, 1));
    io[0].desc.format = TensorFormat::kLINEAR;

    CHECK(build->configurePlugin(io, 4, io + 4, 1) == 0);
    io[1].desc.dims = dims2(-1, 96);
    CHECK(build->configurePlugin(io, 4, io + 4, 1) != 0 && gLogger.sawError("width"));
    io[1].desc.dims = dims2(-1, 128);
    io[2].max = dims2(4096, 256);
    CHECK(build->configurePlugin(io, 4, io + 4, 1) != 0);
    io[2].max = dims2(4096, 128);
    CHECK(build->getWorkspaceSize(io, 4, io + 4, 1) == 0);
    CHECK(std::string(build->getMetadataString()).find("head_dim=64") != std::string::npos);
    checkTimingCacheId(creator, build);

    PluginTensorDesc rt[5]{};
    for (int i = 0; i < 5; ++i)
    {
        rt[i] = io[i].desc;
        rt[i].dims = i == 3 ? dims1(4) : dims2(300, 128);
    }
    CHECK(runtime->onShapeChange(rt, 4, rt + 4, 1) == 0);
    rt[3].dims = dims1(0);
    CHECK(runtime->onShapeChange(rt, 4, rt + 4, 1) != 0);
    rt[3].dims = dims1(4);

    // enqueue: zero tokens is a no-op; a misaligned pointer is rejected before anything touches the device.
    rt[0].dims = dims2(0, 128);
    void const* ins[4] = {nullptr, nullptr, nullptr, nullptr};
    void* outs[1] = {nullptr};
    CHECK(runtime->enqueue(rt, rt + 4, ins, outs, nullptr, nullptr) == 0);
    rt[0].dims = dims2(300, 128);
    void const* bad[4] = {reinterpret_cast<void const*>(1), reinterpret_cast<void const*>(16),
        reinterpret_cast<void const*>(16), reinterpret_cast<void const*>(16)};
    void* badOut[1] = {reinterpret_cast<void*>(16)};
    CHECK(runtime->enqueue(rt, rt + 4, bad, badOut, nullptr, nullptr) != 0 && gLogger.sawError("aligned"));

    // Serialisation round trip through the runtime phase.
    PluginFieldCollection const* ser = runtime->getFieldsToSerialize();
    CHECK(ser != nullptr && ser->nbFields == 3);
    IPluginV3* restored = creator->createPlugin("layer", ser, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    auto* restoredBuild
        = static_cast<IPluginV3OneBuild*>(restored->getCapabilityInterface(PluginCapabilityType::kBUILD));
    CHECK(std::strcmp(restoredBuild->getMetadataString(), build->getMetadataString()) == 0);
    CHECK(std::strcmp(restoredBuild->getTimingCacheID(), build->getTimingCacheID()) == 0);
    IPluginV3* cloned = plugin->clone();
    CHECK(cloned != nullptr && cloned != plugin);
    IPluginV3* attached = runtime->attachToContext(nullptr);
    CHECK(attached != nullptr);
    delete attached;
    delete cloned;
    delete restored;
    delete plugin;
}

void* dlopenOrDie(char const* lib)
{
    void* handle = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr)
    {
        std::printf("FAIL: dlopen: %s\n", dlerror());
        std::exit(1);
    }
    return handle;
}

IPluginCreatorInterface* theOnlyCreator()
{
    CHECK(gRegistry.creators.size() == 1);
    IPluginCreatorInterface* c = gRegistry.find("NavitPackedAttention", "1", "navit");
    CHECK(c != nullptr);
    return c;
}

} // namespace

int main(int argc, char** argv)
{
    int arg = 1;
    if (arg < argc && std::strcmp(argv[arg], "--strict") == 0)
    {
        gRegistry.strict = true;
        ++arg;
    }
    if (argc - arg < 2)
    {
        std::printf("usage: %s [--strict] MODE LIB [LIB2] (see the comment at the top of the source)\n", argv[0]);
        return 2;
    }
    std::string const mode = argv[arg];
    char const* lib = argv[arg + 1];
    char const* lib2 = argc - arg > 2 ? argv[arg + 2] : nullptr;
    if (mode == "dlopen-registers" || mode == "plugin")
    {
        dlopenOrDie(lib);
        IPluginCreatorInterface* c = theOnlyCreator(); // registered by the static initializer
        if (mode == "plugin")
        {
            exercisePlugin(asV3(c));
            CHECK(!gLogger.messages.empty()); // errors went to getLogger() (no ILoggerFinder given)
        }
    }
    else if (mode == "dlopen-silent")
    {
        dlopenOrDie(lib);
        CHECK(gRegistry.creators.empty());
    }
    else if (mode == "loadlibrary")
    {
        CHECK(gRegistry.loadLibrary(lib) != nullptr); // no duplicate, no refused call in --strict
        exercisePlugin(asV3(theOnlyCreator()));       // the logger finder given by loadLibrary is used
    }
    else if (mode == "dlopen-then-load")
    {
        dlopenOrDie(lib);
        CHECK(gRegistry.loadLibrary(lib) != nullptr);
        theOnlyCreator();
    }
    else if (mode == "load-then-dlopen")
    {
        CHECK(gRegistry.loadLibrary(lib) != nullptr);
        IPluginCreatorInterface* c = theOnlyCreator();
        dlopenOrDie(lib);
        CHECK(theOnlyCreator() == c);
    }
    else if (mode == "autoreg-then-plain" && lib2 != nullptr)
    {
        dlopenOrDie(lib);
        IPluginCreatorInterface* c = theOnlyCreator();
        CHECK(gRegistry.loadLibrary(lib2) == nullptr); // the plain library's creator is a duplicate
        CHECK(theOnlyCreator() == c);
    }
    else if (mode == "plain-then-autoreg" && lib2 != nullptr)
    {
        CHECK(gRegistry.loadLibrary(lib) != nullptr);
        IPluginCreatorInterface* c = theOnlyCreator();
        dlopenOrDie(lib2);
        CHECK(theOnlyCreator() == c);
    }
    else
    {
        std::printf("FAIL: unknown mode %s (or LIB2 missing)\n", mode.c_str());
        return 2;
    }
    if (gRegistry.strict)
    {
        CHECK(gRegistry.reentrantCalls == 0); // nothing of the library called the registry inside loadLibrary
    }
    std::printf("OK\n");
    return 0;
}
