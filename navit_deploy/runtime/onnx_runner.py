"""ONNX Runtime runner (CPU and CUDA providers). Torch-free.

Lowerings with custom nodes that no CPU provider implements (``trt-plugin``, ``trt-native``, and
``ort-packed`` off CUDA; ``dense`` and ``ort-mha`` run natively on CPU and CUDA) can be run with ``reference_ops=True``: the nodes are re-homed to the
onnxruntime-extensions domain and computed by :mod:`navit_deploy.runtime.reference_ops`. That checks the
graph around them on any machine; it is a validation mode, not a deployment path.

Models over 2 GB keep their weights in ``<model>.onnx.data`` beside the graph (ONNX external data, see
:mod:`navit_deploy.runtime.external_data`); the runner checks the file is there and builds the session from the
model's path, so ONNX Runtime reads the weights from it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from navit_deploy.errors import ArtifactMismatchError, BackendUnavailableError
from navit_deploy.frontend.config import budget_flag
from navit_deploy.runtime.artifact import DeploymentArtifact, check_io_shapes, read_artifact, sha256_file
from navit_deploy.runtime.external_data import ARTIFACT_KEY, DataFile, check_required
from navit_deploy.runtime.runner import PackLimits, Runner, RunnerOutput, tokens_output

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
CUSTOM_DOMAINS = {"trt-plugin": "navit", "trt-native": "trt", "ort-packed": "com.microsoft"}


def native_providers(lowering: str) -> tuple[str, ...]:
    """Providers that run a lowering with real kernels."""
    return {"dense": ("cpu", "cuda"), "ort-mha": ("cpu", "cuda"), "ort-packed": ("cuda",)}.get(lowering, ())


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def default_concurrency(provider: str) -> int:
    """Packs in flight at once: 2 on a multi-core CPU, 1 on CUDA (one stream) or a single core."""
    return 2 if provider == "cpu" and usable_cpus() >= 2 else 1


class OnnxRunner(Runner):
    """Runs an exported NaViT with ONNX Runtime. ``provider``: ``"cpu"`` or ``"cuda"``.

    ``spin``: let idle intra-op threads busy-wait between ops (ONNX Runtime's default). Off by default
    here, because the pipeline's front-end threads share the cores with the model: spinning threads take
    the CPU the front end needs (measured on 2 cores: +8% images/s with the front end overlapped, no loss
    back to back).

    ``concurrency``: how many packs :class:`~navit_deploy.runtime.Pipeline` may run through the session
    at once (ONNX Runtime sessions are safe to call from several threads). Default: 2 on a CPU with at
    least 2 cores, else 1. One call leaves cores idle in its small ops (layer norms, softmax, quantize);
    a second call in flight fills them. ``threads``: intra-op threads per call (default: ONNX Runtime's,
    one per core). Measured on 2 cores, 2 calls of 2 threads vs 2 calls of 1 thread: the same images/s
    end to end, 9% fewer model-only images/s, and 19% lower latency per frame when streaming.

    ``memory_pattern``: ONNX Runtime's memory-pattern planning (off by default; ``NAVIT_ORT_MEMORY_PATTERN=1``
    turns it on). It plans one allocation per input shape and keeps it, which suits fixed shapes; packs
    cut to their fill come in many lengths, and measured over five calls of 2,000 mixed images resident
    memory settled near 490 MB with it and 300-350 MB without it.

    A model with external data (``m.onnx`` + ``m.onnx.data``): the data file must be beside the model and hold
    every byte the graph points at, else :class:`ArtifactMismatchError` naming it. Every activation checks the
    graph file's sha256 (as for a self-contained model) and the data file's size and mtime against those seen at
    open (hashing gigabytes at every activation would cost seconds): a data file replaced or rewritten since open
    is refused. The session is then built from the model's path (ONNX Runtime resolves the data file beside it),
    so the graph is read once more after its hash was checked. ``reference_ops=True`` works on such a model too:
    the custom nodes of the graph (without its weights) are re-homed and the session, built from those bytes,
    reads the weights from the model's folder (ONNX Runtime's
    ``session.model_external_initializers_file_folder_path`` option; checked with ONNX Runtime 1.32).
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None,
                 reference_ops: bool = False, spin: bool = False, concurrency: int | None = None,
                 memory_pattern: bool | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency
            raise BackendUnavailableError("onnxruntime is not installed (pip install onnxruntime)") from exc
        self._ort = ort
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactMismatchError(f"ONNX model not found: {self.path}")
        if self.path.stat().st_size == 0:
            raise ArtifactMismatchError(f"{self.path} is empty (0 bytes): an interrupted copy or export? "
                                        "Copy or export it again")
        # What this runner was opened on: every activation checks that the file is still these bytes.
        self.model_sha256 = sha256_file(self.path)
        if provider not in PROVIDERS:
            raise BackendUnavailableError(f"unknown provider {provider!r}; choose one of {sorted(PROVIDERS)}")
        if PROVIDERS[provider] not in ort.get_available_providers():
            raise BackendUnavailableError(f"ONNX Runtime here has no {PROVIDERS[provider]} "
                                          f"(available: {ort.get_available_providers()}); install onnxruntime-gpu for CUDA")
        self.provider = provider
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.concurrency = concurrency if concurrency is not None else default_concurrency(provider)
        self.threads = threads
        self.spin = spin
        self.memory_pattern = bool(memory_pattern) if memory_pattern is not None else bool(os.environ.get(
            "NAVIT_ORT_MEMORY_PATTERN"))
        self.reference_ops = reference_ops
        self._required: dict[Path, int] = {}
        self.artifact: DeploymentArtifact = self._read_artifact()
        if not self._required and self.artifact.extra.get(ARTIFACT_KEY):  # no onnx package to read the graph with
            self._required = {self.path.with_name(self.artifact.extra[ARTIFACT_KEY]): 0}
        # External data files (none for a self-contained model), with their size and mtime at open.
        self.data_files: tuple[DataFile, ...] = check_required(self._required, self.path)
        low = self.artifact.lowering
        if provider not in native_providers(low) and not reference_ops:
            runs = ", ".join(native_providers(low)) or "no ONNX Runtime provider (TensorRT only)"
            raise ArtifactMismatchError(f"{self.path.name} uses the {low!r} attention lowering, which runs on {runs}, "
                                        f"not on {provider!r}. Export with --attention dense for this provider, "
                                        "or pass reference_ops=True (navit infer/parity --reference-ops) to validate the graph with "
                                        "reference kernels")
        self.precision = self.artifact.precision
        self.session = None
        super().__init__(self.artifact.frontend.patch_dim, limits=None)
        self.max_grid = self.artifact.frontend.max_grid
        self.input_names = tuple(self.artifact.inputs)
        self.output_kind = self.artifact.output_kind
        self.windows = self.artifact.windows

    def _read_artifact(self) -> DeploymentArtifact:
        try:
            meta = self._metadata_only()
        except ArtifactMismatchError as exc:
            raise ArtifactMismatchError(f"{self.path}: not a NaViT export ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 - any failure here means "not a model we can read"
            raise ArtifactMismatchError(f"{self.path}: not a readable ONNX model ({exc})") from exc
        return read_artifact(self.path, meta)

    def _metadata_only(self) -> dict[str, str]:
        """Model metadata without building a session (works for graphs with unknown custom ops)."""
        try:
            import onnx
        except ImportError:
            return {}
        from navit_deploy.runtime.external_data import required_files

        model = onnx.load(str(self.path), load_external_data=False)
        if not model.graph.node:
            raise ArtifactMismatchError("the file holds no ONNX graph")
        self._required = required_files(model, self.path)
        return {p.key: p.value for p in model.metadata_props}

    def _check_data_files(self) -> None:
        """The external data files are still those seen at open (same size and mtime)."""
        for df in self.data_files:
            try:
                st = df.path.stat()
            except FileNotFoundError:
                raise ArtifactMismatchError(f"{df.path.name} (the weights of {self.path.name}) disappeared since this "
                                            f"runner opened it: copy it back beside {self.path.name}") from None
            if (st.st_size, st.st_mtime_ns) != df.stat_key():
                raise ArtifactMismatchError(f"{df.path} (the weights of {self.path.name}) changed on disk since this "
                                            f"runner opened it ({df.size} -> {st.st_size} bytes, or a new mtime): "
                                            "open a new runner for the new files")

    def _model_source(self, opts) -> bytes | str:
        """What to build the session from: the model's bytes (self-contained), its path (external data, so ONNX
        Runtime finds the data file beside it), or re-homed graph bytes for reference kernels. The graph is
        checked against the hash taken at open, the data files against their size and mtime: a file replaced or
        rewritten since then (between a deactivate and an activate, say) is refused, never loaded under the old
        description."""
        data = self.path.read_bytes() if self.path.is_file() else b""
        if hashlib.sha256(data).hexdigest() != self.model_sha256:
            raise ArtifactMismatchError(f"{self.path} changed on disk since this runner opened it (sha256 "
                                        f"{self.model_sha256[:12]}...): open a new runner for the new file")
        self._check_data_files()
        if not self._rehomed():
            return str(self.path) if self.data_files else data
        import onnx

        from navit_deploy.runtime.reference_ops import rehome_custom_nodes

        model = onnx.load_from_string(data)  # external tensors stay references to the data file
        rehome_custom_nodes(model, CUSTOM_DOMAINS[self.artifact.lowering])
        if self.data_files:  # a session built from bytes resolves external data against this folder
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                          str(self.path.resolve().parent))
        return model.SerializeToString()

    def _rehomed(self) -> bool:
        """Custom nodes run with the reference kernels: asked for, and the provider has no kernel of its own."""
        return self.reference_ops and self.provider not in native_providers(self.artifact.lowering)

    def _activate(self) -> None:
        ort = self._ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Memory patterns are planned per input shape and cached; packs come in many lengths, and every
        # cached plan keeps its own block in the arena (see `memory_pattern` in the class docstring).
        opts.enable_mem_pattern = self.memory_pattern
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        if self._rehomed():
            from onnxruntime_extensions import get_library_path

            from navit_deploy.runtime.reference_ops import register_ort_reference_ops

            # The Python ops must exist before the library is registered, or ORT crashes on the unknown op.
            register_ort_reference_ops()
            opts.register_custom_ops_library(get_library_path())
        source = self._model_source(opts)
        try:
            self.session = ort.InferenceSession(source, opts, providers=[PROVIDERS[self.provider]])
        except Exception as exc:  # noqa: BLE001 - ORT raises a zoo of types
            raise ArtifactMismatchError(f"{self.path}: ONNX Runtime cannot load it ({exc})") from exc
        names = [i.name for i in self.session.get_inputs()]
        outs = [o.name for o in self.session.get_outputs()]
        if names != list(self.input_names) or outs != list(self.artifact.outputs):
            self.session = None
            raise ArtifactMismatchError(f"{self.path} is not a NaViT export: inputs {names}, outputs {outs}")
        problems = check_io_shapes(self.artifact, {i.name: i.shape for i in self.session.get_inputs()},
                                   {o.name: o.shape for o in self.session.get_outputs()})
        if problems:
            self.session = None
            raise ArtifactMismatchError(f"{self.path} does not match its artifact description: {'; '.join(problems)}. "
                                        "The model and its description come from different exports; re-export")

    def _infer(self, feed: dict[str, np.ndarray]) -> RunnerOutput:
        if int(feed["coords"].max(initial=0)) >= self.max_grid:
            from navit_deploy.errors import InputValidationError

            raise InputValidationError(f"patch coordinate {int(feed['coords'].max())} is outside the model's "
                                       f"{self.max_grid}x{self.max_grid} positional table; lower the budget "
                                       f"({budget_flag(self.artifact.frontend)})")
        assert self.session is not None
        outs = self.session.run(list(self.artifact.outputs), {k: feed[k] for k in self.input_names})
        if self.output_kind == "tokens":
            return tokens_output(outs[0], self.artifact.token_dim, self.path, "re-export the model")
        emb = outs[0]
        if emb.ndim != 2 or emb.shape[1] != self.artifact.dim:
            raise ArtifactMismatchError(f"{self.path} returned embeddings of shape {list(emb.shape)}, but its artifact "
                                        f"says [images, {self.artifact.dim}]; re-export the model")
        logits = np.asarray(outs[1], dtype=np.float32) if len(outs) > 1 else None
        return RunnerOutput(np.asarray(emb, dtype=np.float32), logits)

    def _deactivate(self) -> None:
        self.session = None

    def pack_limits(self) -> PackLimits:
        return PackLimits(self.artifact.pack_len, self.artifact.max_images)
