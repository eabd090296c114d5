"""``navit compile``: an exported NaViT ONNX model -> a TensorRT engine plus its JSON sidecar.

Two steps:

* :func:`plan_compile` checks everything that does not need TensorRT (the ONNX artifact, the lowering, the
  plugin's head dims and library path, int8 without Q/DQ, profiles, paths) so mistakes are reported on any
  machine, before a GPU is involved.
* :func:`compile_engine` then builds with TensorRT through Polygraphy's loaders: ``create_network`` (strongly
  typed on TensorRT 11), TensorRT's ONNX parser (its errors are kept to tell a missing plugin from other
  failures), ``Profile``/``CreateConfig`` (profiles, timing cache, workspace, FP16/INT8 flags on TensorRT 10)
  and ``EngineBytesFromNetwork`` (build and timing-cache save); it writes ``<engine>`` and ``<engine>.json``.

A VLM tower's export (artifact ``output_kind`` "tokens": Qwen2.5-VL with two window inputs, Qwen2-VL without)
compiles the same way: its inputs and their declared shapes are read from the ONNX graph, and its profiles get the
merge-block unit and, when windowed, the window range (:mod:`navit_deploy.compile.profiles`); every network input
gets a shape range in every profile. The sidecar keeps the artifact's ``output_kind``, ``inputs`` and ``window``.

A model over 2 GB (weights as ONNX external data in ``<model>.onnx.data``) compiles the same way: the plan reads
only the graph (``load_external_data=False``) and checks that the data file is beside it and long enough, and
TensorRT's ``parser.parse_from_file`` resolves the data file relative to the model's path. Nothing here reads the
ONNX bytes (no ``parser.parse(bytes)``, which could not find the weights). The engine sidecar's source sha256 is
the graph file's.

The sidecar is the ONNX model's :class:`DeploymentArtifact` with the engine's precision and an ``engine``
section under ``extra`` (:class:`~navit_deploy.compile.compat.EngineInfo`): TensorRT version, GPU name and
compute capability, profiles, precision and builder flags, plugin library path and sha256, source ONNX sha256,
engine sha256, build time. :class:`~navit_deploy.runtime.tensorrt_runner.TensorRTRunner` checks it before
loading the engine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from navit_deploy.compile import trt_env
from navit_deploy.compile.compat import (EngineInfo, GpuInfo, PrecisionPlan, check_head_dim, check_io_names,
                                         check_lowering, is_trt11, parse_version, plan_precision, sha256_file,
                                         with_engine)
from navit_deploy.compile.plugin_lib import PLUGIN_NAME, find_plugin_library
from navit_deploy.compile.profiles import (GraphShape, PackProfile, check_profile_inputs, check_profiles,
                                           default_profiles, fit_to_model, window_bound)
from navit_deploy.errors import (ArtifactMismatchError, BackendUnavailableError, ConfigError, NavitError,
                                 PluginError)
from navit_deploy.runtime.artifact import DeploymentArtifact, read_artifact, write_sidecar
from navit_deploy.runtime.external_data import check_data_files
from navit_deploy.runtime.open import ENGINE_SUFFIXES  # the suffixes open_runner hands to TensorRT

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
TRT_NATIVE_OP = "TRT_Attention"
POLYGRAPHY_MIN_FOR_TRT11 = (0, 50, 3)
"""First Polygraphy whose ``CreateConfig`` guards ``ILayer.precision_is_set``, which TensorRT 11 removed."""
POLYGRAPHY_INSTALL = "pip install 'polygraphy>=0.50.3'"


class EngineBuildError(NavitError):
    """TensorRT could not parse the model or build the engine (details in TensorRT's log)."""


@dataclass(frozen=True)
class CompileRequest:
    """What ``navit compile`` was asked for. ``profiles=None``: one profile per pack-length bucket."""

    onnx: Path
    out: Path
    precision: str | None = None
    plugin: str | None = None
    profiles: tuple[PackProfile, ...] | None = None
    pack_lens: tuple[int, ...] | None = None
    max_images: int | None = None
    timing_cache: Path | None = None
    workspace_mib: int | None = None
    tf32: bool = False
    strongly_typed: bool | None = None
    device: int = 0


@dataclass(frozen=True)
class OnnxSummary:
    """What compile needs from the ONNX file (read with ``onnx``, without external data)."""

    artifact: DeploymentArtifact
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    has_qdq: bool
    sha256: str
    qdq_problems: tuple[str, ...] = ()
    input_shapes: dict[str, GraphShape] = field(default_factory=dict)
    """Each graph input's declared shape: ints for static dims, the ``dim_param`` name for dynamic ones."""


@dataclass(frozen=True)
class CompilePlan:
    request: CompileRequest
    model: OnnxSummary
    profiles: tuple[PackProfile, ...]
    needs_plugin: bool
    plugin_path: Path | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompileResult:
    engine_path: Path
    sidecar_path: Path
    artifact: DeploymentArtifact
    info: EngineInfo
    notes: tuple[str, ...] = field(default_factory=tuple)


def read_onnx_summary(path: str | os.PathLike[str]) -> OnnxSummary:
    """Artifact, I/O names, Q/DQ presence and sha256 of an exported model."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactMismatchError(f"ONNX model not found: {p}")
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailableError("the onnx package is needed to compile (pip install onnx)") from exc
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise ArtifactMismatchError(f"{p}: not a readable ONNX model ({exc})") from exc
    meta = {m.key: m.value for m in model.metadata_props}
    artifact = read_artifact(p, meta)
    check_data_files(model, p)  # external data (over 2 GB): present beside the model, before TensorRT parses it
    nodes = list(model.graph.node) + [n for fn in model.functions for n in fn.node]
    init_names = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init_names]
    inputs = tuple(i.name for i in graph_inputs)
    outputs = tuple(o.name for o in model.graph.output)
    check_io_names(inputs, outputs, str(p), artifact)
    if inputs != tuple(artifact.inputs):
        raise ArtifactMismatchError(f"{p} has inputs {list(inputs)}, its artifact says {list(artifact.inputs)}; "
                                    "re-export the model (`navit export`)")
    qdq = [n for n in nodes if n.op_type in QDQ_OPS]
    shapes = {i.name: _graph_shape(i) for i in graph_inputs}
    return OnnxSummary(artifact, inputs, outputs, bool(qdq), sha256_file(p), _qdq_problems(onnx, model, qdq), shapes)


def _graph_shape(value_info: Any) -> GraphShape:
    """An ONNX input's declared shape (``dim_value`` ints, ``dim_param`` names, None where neither is set)."""
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)


def _qdq_problems(onnx: Any, model: Any, qdq: list) -> tuple[str, ...]:
    """TensorRT's GPU Q/DQ is symmetric signed INT8: zero points must be int8 zeros (uint8 is DLA-only)."""
    consts = {t.name: t for t in model.graph.initializer}
    consts.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    problems = set()
    for node in qdq:
        if len(node.input) < 3 or not node.input[2] or node.input[2] not in consts:
            continue  # no zero point (defaults to int8 0) or a computed one
        zp = consts[node.input[2]]
        if zp.data_type != onnx.TensorProto.INT8:
            problems.add(f"{onnx.TensorProto.DataType.Name(zp.data_type).lower()} zero points")
        elif onnx.numpy_helper.to_array(zp).any():
            problems.add("non-zero (asymmetric) zero points")
    return tuple(sorted(problems))


def plan_compile(req: CompileRequest) -> CompilePlan:
    """Every check that needs no TensorRT; raises a :class:`NavitError` subclass saying what to do."""
    out = Path(req.out)
    if out.suffix not in ENGINE_SUFFIXES:
        raise ConfigError(f"--out {out}: engine files must end in {', '.join(ENGINE_SUFFIXES)} (that is how "
                          "`navit infer`/`navit parity` recognise a TensorRT engine)")
    if Path(req.onnx).resolve() == out.resolve():
        raise ConfigError("--out must not be the ONNX model itself")
    if req.workspace_mib is not None and req.workspace_mib <= 0:
        raise ConfigError(f"--workspace must be a positive number of MiB, got {req.workspace_mib}")
    if req.device < 0:
        raise ConfigError(f"--device must be >= 0, got {req.device}")
    model = read_onnx_summary(req.onnx)
    art = model.artifact
    needs_plugin = check_lowering(art.lowering)
    check_head_dim(art.lowering, art.head_dim)
    notes = []
    plugin_path = None
    if needs_plugin:
        plugin_path = find_plugin_library(req.plugin)
    elif req.plugin:
        notes.append(f"--plugin ignored: the {art.lowering!r} lowering needs no plugin")
    # The TensorRT 10 (weakly typed) rules refuse a subset of what any TensorRT refuses: checking them now
    # reports int8-without-Q/DQ and impossible requests before TensorRT is needed.
    plan_precision("10.0", req.precision, art.precision, model.has_qdq, req.strongly_typed or None)
    if model.qdq_problems:
        raise ConfigError(f"{req.onnx} has Q/DQ nodes with {' and '.join(model.qdq_problems)}; TensorRT's INT8 is "
                          "symmetric signed int8 (zero point 0). Re-quantize with `navit quantize --onnx MODEL.onnx "
                          "--precision int8 --activations int8 --out MODEL.int8.onnx`")
    patch_dim = art.frontend.patch_dim
    if patch_dim <= 0:
        raise ConfigError(f"the artifact's patch dim is {patch_dim}")
    unit = art.windows.unit if art.windows is not None else 1
    windowed = "window_cu_seqlens" in model.inputs
    if req.profiles:
        if req.pack_lens or req.max_images:
            raise ConfigError("give either --profile or --pack-lens/--max-images, not both")
        profiles = check_profiles([fit_to_model(p, unit) for p in req.profiles])
        short = [p for p in profiles if p.windowed and p.max_windows < window_bound(p.max_tokens, unit)]
        if short:
            notes.append(f"{len(short)} profile(s) allow fewer windows than their tokens can hold (up to one per "
                         f"merge block of {unit} tokens): packs of many small images will be refused at run time")
    else:
        max_images = req.max_images if req.max_images is not None else art.max_images
        profiles = check_profiles(default_profiles(art.pack_len, max_images, art.frontend.max_tokens_per_image,
                                                   req.pack_lens, unit=unit, windowed=windowed, window=art.window))
    check_profile_inputs(profiles, patch_dim, model.input_shapes, str(req.onnx))
    biggest, per_image = max(p.max_tokens for p in profiles), art.frontend.max_tokens_per_image
    if per_image > biggest:
        notes.append(f"the largest profile takes {biggest} tokens, but one image at the model's full budget has up to "
                     f"{per_image}: such images will be refused; add a larger pack length (--pack-lens ...,"
                     f"{-(-per_image // unit) * unit}) or lower the budget")
    if req.timing_cache is not None and not Path(req.timing_cache).parent.exists():
        raise ConfigError(f"--timing-cache {req.timing_cache}: its directory does not exist")
    return CompilePlan(req, model, tuple(profiles), needs_plugin, plugin_path, tuple(notes))


@dataclass(frozen=True)
class PolygraphyApi:
    """The parts of Polygraphy ``navit compile`` uses: ``polygraphy.backend.trt``, its exception type, its version."""

    trt: Any
    exception: type[BaseException]
    version: str


def _polygraphy() -> PolygraphyApi:
    try:
        import polygraphy
        from polygraphy.backend import trt as poly_trt
        from polygraphy.exception import PolygraphyException
    except ImportError as exc:
        raise BackendUnavailableError(f"Polygraphy is needed to compile ({POLYGRAPHY_INSTALL})") from exc
    return PolygraphyApi(poly_trt, PolygraphyException, str(getattr(polygraphy, "__version__", "unknown")))


def check_polygraphy(polygraphy_version: str, trt_version: str) -> None:
    """Refuse a Polygraphy too old for this TensorRT, naming both versions and the install command.

    Polygraphy < 0.50.3 reads ``layer.precision_is_set`` in ``CreateConfig``; TensorRT 11's Python ``ILayer`` no
    longer has it, so the build would die with an ``AttributeError`` after parsing.
    """
    try:
        too_old = is_trt11(trt_version) and parse_version(polygraphy_version)[:3] < POLYGRAPHY_MIN_FOR_TRT11
    except ConfigError:  # an unparsable Polygraphy version: let the build try, _api_mismatch reports failures
        return
    if too_old:
        need = ".".join(map(str, POLYGRAPHY_MIN_FOR_TRT11))
        raise EngineBuildError(f"Polygraphy {polygraphy_version} cannot build engines with TensorRT {trt_version}: its "
                               "CreateConfig reads ILayer.precision_is_set, which TensorRT 11 removed. Polygraphy >= "
                               f"{need} handles TensorRT 11: {POLYGRAPHY_INSTALL}")


@contextmanager
def _api_mismatch(trt_version: str, polygraphy_version: str) -> Iterator[None]:
    """Turn an ``AttributeError``/``TypeError`` raised inside TensorRT or Polygraphy calls into an
    :class:`EngineBuildError` naming both versions: it means the two do not match (an attribute or argument one
    of them no longer has), not a problem with the model."""
    try:
        yield
    except (AttributeError, TypeError) as exc:
        raise EngineBuildError(f"TensorRT {trt_version} and Polygraphy {polygraphy_version} do not work together "
                               f"({type(exc).__name__}: {exc}). Install a Polygraphy made for this TensorRT (TensorRT "
                               f"11 needs Polygraphy >= 0.50.3: {POLYGRAPHY_INSTALL}), or the TensorRT version the "
                               "installed Polygraphy supports") from exc


def _parse_onnx(trt: Any, poly_trt: Any, plan: CompilePlan, precision: PrecisionPlan, version: str) -> tuple:
    """``(builder, network, parser)`` from TensorRT's ONNX parser; classified errors on failure."""
    # TensorRT 11 networks are always strongly typed (the flag is deprecated and ignored there); on 10 it is opt-in.
    builder, network = poly_trt.create_network(strongly_typed=precision.strongly_typed and not is_trt11(version))
    logger = poly_trt.get_trt_logger()
    init_plugins = getattr(trt, "init_libnvinfer_plugins", None)  # only in full (non-lean) bindings; not needed by
    if init_plugins is not None:  # our graphs, but it is what Polygraphy's NetworkFromOnnxPath does before parsing
        init_plugins(logger, "")
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(plan.request.onnx))
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    if ok and not errors:
        return builder, network, parser
    lines = [f"{e.node_operator() or '?'} node {e.node_name()!r}: {e.desc()}" for e in errors] or ["(no parser errors)"]
    detail = "; ".join(lines[:6]) + (f"; … {len(lines) - 6} more" if len(lines) > 6 else "")
    ops = {e.node_operator() for e in errors}
    if plan.needs_plugin and PLUGIN_NAME in ops:
        raise PluginError(f"TensorRT {version}'s ONNX parser could not create the {PLUGIN_NAME} nodes: plugin library "
                          f"missing or built for another TensorRT ({plan.plugin_path}). Parser: {detail}")
    if TRT_NATIVE_OP in ops:  # check_lowering already refused TensorRT < 11.1
        raise EngineBuildError(f"TensorRT {version} could not import the {TRT_NATIVE_OP} nodes of the trt-native "
                               f"lowering; export with --attention trt-plugin or dense instead. Parser: {detail}")
    raise EngineBuildError(f"TensorRT {version} cannot parse {plan.request.onnx}: {detail}")


def _write_atomic(path: Path, data: Any) -> None:
    """Write a bytes-like object (TensorRT's ``IHostMemory`` supports the buffer protocol) via a temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def compile_engine(req: CompileRequest) -> CompileResult:
    """Build the engine and write ``req.out`` and its sidecar ``<out>.json``."""
    plan = plan_compile(req)
    art = plan.model.artifact
    trt = trt_env.import_tensorrt()
    version = str(trt.__version__)
    check_lowering(art.lowering, version)
    precision = plan_precision(version, req.precision, art.precision, plan.model.has_qdq, req.strongly_typed)
    poly = _polygraphy()
    check_polygraphy(poly.version, version)
    gpu: GpuInfo = trt_env.gpu_info(req.device)  # also makes it the current device, which the builder uses
    plugin_sha = None
    if plan.needs_plugin:
        assert plan.plugin_path is not None
        trt_env.load_plugin(plan.plugin_path)
        plugin_sha = sha256_file(plan.plugin_path)

    start = time.time()
    with _api_mismatch(version, poly.version):
        serialized = _build(trt, poly, plan, precision, version)
    out = Path(req.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, serialized)
    seconds = time.time() - start
    info = EngineInfo(
        tensorrt_version=version, gpu=gpu, precision=precision.precision, source_precision=art.precision,
        strongly_typed=precision.strongly_typed, builder_flags=tuple(precision.builder_flags), tf32=bool(req.tf32),
        profiles=plan.profiles, source_onnx=str(Path(req.onnx).resolve()), source_onnx_sha256=plan.model.sha256,
        engine_sha256=sha256_file(out), plugin_path=None if plan.plugin_path is None else str(plan.plugin_path),
        plugin_sha256=plugin_sha, workspace_mib=req.workspace_mib, timing_cache=_timing_cache_path(req),
        build_seconds=seconds, built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    artifact = with_engine(art, info)
    side = write_sidecar(out, artifact)
    return CompileResult(out, side, artifact, info, plan.notes)


def _timing_cache_path(req: CompileRequest) -> str | None:
    return str(req.timing_cache) if req.timing_cache is not None else None


def _build(trt: Any, poly: PolygraphyApi, plan: CompilePlan, precision: PrecisionPlan, version: str) -> Any:
    """Parse, set up profiles and config, build; the serialized engine (a bytes-like ``IHostMemory``)."""
    req = plan.request
    builder, network, parser = _parse_onnx(trt, poly.trt, plan, precision, version)
    net_inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    net_outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    check_io_names(net_inputs, net_outputs, f"the network TensorRT parsed from {req.onnx}", plan.model.artifact)
    shape_inputs = [network.get_input(i).name for i in range(network.num_inputs) if network.get_input(i).is_shape_tensor]
    if shape_inputs:  # profiles below give shapes, not value ranges, and the runner feeds device memory
        raise EngineBuildError(f"TensorRT treats {shape_inputs} of {req.onnx} as shape tensors (their values decide "
                               "shapes); NaViT exports use them as data only. Re-export the model with `navit export`")
    patch_dim = plan.model.artifact.frontend.patch_dim
    profiles = []
    for p in plan.profiles:
        shapes = p.shapes(patch_dim)
        uncovered = [n for n in net_inputs if n not in shapes]
        if uncovered:  # plan_compile checked the ONNX inputs; TensorRT needs a range for every network input
            raise EngineBuildError(f"the optimization profile {p.describe()} gives no shapes for network inputs "
                                   f"{uncovered} of {req.onnx}")
        prof = poly.trt.Profile()
        for name in net_inputs:  # all parsed inputs; the builder later drops those the graph never reads
            lo, opt, hi = shapes[name]
            prof.add(name, min=lo, opt=opt, max=hi)
        profiles.append(prof)
    pools = None
    if req.workspace_mib is not None:
        pools = {trt.MemoryPoolType.WORKSPACE: int(req.workspace_mib) << 20}
    timing_cache = _timing_cache_path(req)
    try:
        config = poly.trt.CreateConfig(profiles=profiles, load_timing_cache=timing_cache, memory_pool_limits=pools,
                                       tf32=req.tf32, fp16=precision.fp16, int8=precision.int8)
        return poly.trt.EngineBytesFromNetwork((builder, network, parser), config=config,
                                               save_timing_cache=timing_cache)()
    except poly.exception as exc:
        raise EngineBuildError(f"TensorRT {version} could not build an engine from {req.onnx} ({exc}); see TensorRT's "
                               "log above") from exc


def describe_profiles(profiles: Sequence[PackProfile]) -> str:
    return "\n".join(f"  profile {i}: {p.describe()}" for i, p in enumerate(profiles))
