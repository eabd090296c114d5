"""Attention's share of a tower's model time, from ONNX Runtime's own profile: window slots, a mask over the pack,
and the ``ort-mha`` lowering.

A windowed VLM tower (Qwen2.5-VL) exported with the dense lowering computes its windowed blocks either in
fixed slots (the default: ``[W, H, 64, 64]`` scores) or with a mask over the whole pack (``[H, T, T]``, what a
dense-mask deployment does). This runs the same packs through both exports with ORT profiling on and sums
node time by kind: *attention* is every MatMul whose two inputs are activations (scores and their product
with V) plus Softmax and the elementwise ops between them (the mask's bias added to the scores); the rest is
the linear layers, norms, rotary embedding, the gathers into and out of the slots, and the merger. The
``ort-mha`` export (every block's attention a ``Loop`` of ``MultiHeadAttention`` over images or windows) counts
each expanded group as attention, its ``Loop`` once (the body's own profile events are not added again). Run:
``python -m navit_deploy.bench.attention_share --model DIR``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ATTENTION_OPS = ("Softmax",)
SCORE_SIDE_OPS = ("Add", "Mul", "Where", "Softmax", "Sub", "Exp", "Div", "ReduceMax", "ReduceSum")


def _attention_nodes(path: Path) -> tuple[set[str], set[str]]:
    """Names of the nodes counted as attention (see the module docstring), and those of ``Loop`` bodies (their
    time is inside their ``Loop``'s)."""
    import onnx

    from navit_deploy.export.segment_loop import is_segment_attention

    model = onnx.load(str(path), load_external_data=False)  # names only: the weights can stay on disk
    inner = {b.name for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
             for b in a.g.node}
    consts = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                          for o in n.output}
    names: set[str] = set()
    scores: set[str] = set()  # outputs on the score side: attention MatMuls and the elementwise ops after them
    for n in model.graph.node:  # graph order is topological
        act_matmul = n.op_type == "MatMul" and not any(i in consts for i in n.input)
        if act_matmul or n.op_type in ATTENTION_OPS or (n.op_type in SCORE_SIDE_OPS and any(i in scores for i in n.input)):
            names.add(n.name)
            if not (act_matmul and any(i in scores for i in n.input)):  # probs @ V ends the score side
                scores.update(n.output)
        elif is_segment_attention(n):
            names.add(n.name)
    return names, inner


def profile_share(path: Path, feeds: Sequence[dict[str, np.ndarray]], threads: int | None = None) -> dict[str, float]:
    """Model seconds and attention's share of node time for ``feeds`` run through the export at ``path``."""
    import onnxruntime as ort

    attn, inner = _attention_nodes(path)
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        sess.run(None, {k: feeds[0][k] for k in names})  # warm-up
        t0 = time.perf_counter()
        for f in feeds:
            sess.run(None, {k: f[k] for k in names})
        seconds = time.perf_counter() - t0
        events = json.loads(Path(sess.end_profiling()).read_text())
    total = attention = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        if node in inner:
            continue
        total += e["dur"]
        # ORT's fused or renamed nodes keep the original name as a prefix
        if node in attn or any(node.startswith(a) for a in attn if a):
            attention += e["dur"]
    return {"model_s": seconds, "attention_share": attention / total if total else float("nan")}


def measure(model: str, n: int = 8, max_pixels: int = 1024 * 1024, seed: int = 0, threads: int | None = None,
            log=print) -> dict[str, Any]:
    """Window slots against a mask over the whole pack and the ``ort-mha`` lowering, on the mixed workload at
    ``max_pixels``, same packs (the dense lowering's packing)."""
    from navit_deploy.bench.peers import workload_files
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.frontend import prepare_image
    from navit_deploy.model.weights import load_model
    from navit_deploy.packing import recommended_packing

    net = load_model(model)
    c = net.config
    if not c.windowed:
        raise SystemExit(f"{model} has no windowed blocks: nothing to compare")
    fe = c.frontend.with_budget(max_pixels=max_pixels)
    with tempfile.TemporaryDirectory() as tmp:
        files = workload_files(fe, n, seed, Path(tmp) / "img")
        items = [prepare_image(f, fe) for f in files]
        packer = recommended_packing(fe.max_tokens_per_image, "dense", "cpu", 64, windows=c.windows)
        feeds = [p.model_inputs() for p in packer.pack(items)]
        out: dict[str, Any] = {"images": n, "max_pixels": max_pixels, "packs": len(feeds),
                               "tokens_per_image": float(np.mean([i.num_tokens for i in items]))}
        for name, lowering, slots in (("window slots", "dense", True), ("mask over the pack", "dense", False),
                                      ("ort-mha", "ort-mha", True)):
            path = Path(tmp) / f"{name.replace(' ', '_')}.onnx"
            export_onnx(net, path, lowering=lowering, window_slots=slots)
            out[name] = profile_share(path, feeds, threads)
            log(f"{name:<20} model {out[name]['model_s']:.2f} s, attention {out[name]['attention_share']:.0%}")
    out["speedup"] = out["mask over the pack"]["model_s"] / out["window slots"]["model_s"]
    out["ort_mha_speedup"] = out["window slots"]["model_s"] / out["ort-mha"]["model_s"]
    log(f"window slots: {out['speedup']:.2f}x the model speed of a mask over the whole pack; ort-mha "
        f"{out['ort_mha_speedup']:.2f}x the window slots'")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--max-pixels", type=int, default=1024 * 1024)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.model, args.n, args.max_pixels, threads=args.threads), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
