"""Benchmark output: terminal table, markdown, JSON and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TABLE_COLUMNS = [  # (header, key, format)
    ("workload", "workload", "{}"), ("strategy", "strategy", "{}"), ("backend", "backend", "{}"),
    ("prec", "precision", "{}"), ("attn", "lowering", "{}"), ("img/s", "images_per_s", "{:.2f}"),
    ("model img/s", "model_images_per_s", "{:.2f}"),
    ("tok/img", "computed_tokens_per_image", "{:.0f}"), ("merged tok/img", "merged_tokens_per_image", "{:.0f}"),
    ("pad", "padding_fraction", "{:.1%}"),
    ("attn x", "attention_waste", "{:.2f}"), ("img/pack", "images_per_pack", "{:.1f}"),
    ("p50 ms", "p50_ms", "{:.1f}"), ("p99 ms", "p99_ms", "{:.1f}"),
    ("pack p50", "pack_p50_ms", "{:.1f}"), ("host", "host_fraction", "{:.1%}"),
    ("host cpu", "host_cpu_fraction", "{:.0%}"),
    ("GFLOP/s", "model_gflop_per_s", "{:.1f}"), ("%peak", "fraction_of_peak", "{:.0%}"),
    ("RSS MB", "peak_rss_mb", "{:.0f}"),
]


COLUMN_NOTES = ("*img/s*: images per second end to end (decode, resize, pack, model), the median of the interleaved "
                "rounds; *model img/s*: the default strategy only, the same packs as its end-to-end pass run again "
                "right after it without the front end (the model's own throughput; it can be below img/s when the "
                "machine's load changed between the two, see the load line); *img/pack*: images per model call; "
                "*p50 ms* / *p99 ms*: per image, the time from handing the whole workload to the pipeline (one "
                "`Pipeline.run` call with all its images, a batch job, not one request per image) to that image's "
                "result, over every round; *pack p50*: median time of one model call (one pack of *img/pack* images "
                "on average); *host*: share of the end-to-end time in which the model was not running (the front end "
                "runs in threads overlapped with the model, so this is the host on the critical path); *host cpu*: "
                "the front end's share of the process's CPU time; *attn x*: attention scores computed / the "
                "per-image ideal; *merged tok/img* (VLM towers): visual tokens per image after the patch merger "
                "(patch tokens / merge_size^2), what the image costs in the language model's prompt.")

# A row whose slowest round took this many times its fastest ran while the machine's load changed.
UNSTABLE_SPREAD = 2.0


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _cells(row: dict[str, Any], columns=TABLE_COLUMNS) -> list[str]:
    cells = [_fmt(row.get(key), fmt) for _, key, fmt in columns]
    if row.get("estimated"):
        cells[[c[1] for c in columns].index("images_per_s")] += "*"
    if unstable(row):
        cells[[c[1] for c in columns].index("images_per_s")] += "†"
    return cells


# Columns shown only when some row has a value (models without a patch merger have no merged tokens).
OPTIONAL_COLUMNS = ("merged_tokens_per_image",)


def _present(rows: Sequence[dict[str, Any]], columns) -> list:
    return [c for c in columns if c[1] not in OPTIONAL_COLUMNS or any(r.get(c[1]) is not None for r in rows)]


def unstable(row: dict[str, Any]) -> bool:
    """Its rounds spread more than :data:`UNSTABLE_SPREAD` x (slowest / fastest)."""
    return (row.get("round_spread") or 1.0) > UNSTABLE_SPREAD


def format_table(rows: Sequence[dict[str, Any]], columns=TABLE_COLUMNS) -> str:
    """A fixed-width table for the terminal (``*``: estimated, not measured)."""
    columns = _present(rows, columns)
    head = [c[0] for c in columns]
    body = [_cells(r, columns) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i >= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def rows_markdown(rows: Sequence[dict[str, Any]]) -> str:
    cols = [c for c in _present(rows, TABLE_COLUMNS) if c[1] not in ("peak_rss_mb",)]
    out = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_cells(r, cols)) + " |")
    if any(r.get("estimated") for r in rows):
        out += ["", "\\* AnyRes: token count only; images/s estimated from the square strategy's tokens/s."]
    shaky = [r for r in rows if unstable(r)]
    if shaky:
        out += ["", f"† Rounds of this row spread more than {UNSTABLE_SPREAD:g}x (slowest / fastest: "
                    + ", ".join(f"{r['strategy']} {_short(r)} {r['round_spread']:.1f}x" for r in shaky)
                    + "): the machine's load changed while it ran; compare it with care."]
    out += ["", COLUMN_NOTES]
    return "\n".join(out)


def verdict(check: dict[str, Any]) -> str:
    """``pass``, ``tie`` (not shown slower: it won a round, though its median is lower) or ``MISS``."""
    if not check["passed"]:
        return "MISS"
    return "tie" if check.get("tie") else "pass"


def targets_markdown(targets: Sequence[dict[str, Any]]) -> str:
    if not targets:
        return "No targets evaluated (they need ONNX Runtime CPU rows for the packed strategy)."
    out = ["| workload | target | measured | result |", "|---|---|---|---|"]
    for t in targets:
        for c in t["checks"]:
            out.append(f"| {t['workload']} | {c['target']} | {c['value']} | {verdict(c)} |")
        for c in t.get("info", []):
            out.append(f"| {t['workload']} | ({c['target']}) | {c['value']} | {info_verdict(c)} |")
    if any(t.get("info") for t in targets):
        out += ["", "Rows in parentheses are reported beside the targets, not targets themselves; their result says "
                    "whether they reach the goal named there."]
    return "\n".join(out)


def info_verdict(check: dict[str, Any]) -> str:
    """``meets <goal>`` or ``misses <goal>`` for a reported (not targeted) figure."""
    goal = check.get("goal")
    if not goal:
        return "ok" if check["passed"] else "not met"
    return f"{'meets' if check['passed'] else 'misses'} {goal}"


def sweep_markdown(sweep: Sequence[dict[str, Any]], best: Sequence[dict[str, Any]]) -> str:
    out = ["| workload | backend | config | img/s | pad | attention x | mean pack | host |", "|---|---|---|---|---|---|---|---|"]
    for r in sweep:
        out.append(f"| {r['workload']} | {r['backend']} ({r['lowering']}) | {r['config']} | {r['images_per_s']:.2f} | "
                   f"{r['padding_fraction']:.1%} | {r['attention_waste']:.2f} | {r['mean_pack_len']:.0f} | "
                   f"{r['host_fraction']:.1%} |")
    if best:
        out += ["", "Fastest per workload: " + "; ".join(f"{b['workload']}: {b['best']}" for b in best)]
    return "\n".join(out)


def render_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [f"# navit bench: {m['model']}", "",
             (f"{m['machine']} ({m['processor']}, {m['cpu_count']} CPUs); onnxruntime {m['onnxruntime']}, "
              f"torch {m['torch']}. Float32 GEMM peak (numpy): {m['peak_gemm_gflop_per_s']} GFLOP/s. "
              f"{m['images_per_workload']} images per workload, {m['repeats']} repeat(s), inputs as {m['input_format']}."),
             "", "Strategies:", ""]
    lines += [f"- **{s}**: {h}" for s, h in m["strategies"].items()]
    from navit_deploy.bench.machine_load import describe_load

    lines += ["", describe_load(m.get("load"))] if m.get("load") else []
    lines += ["", "## Strategies x backends", "", rows_markdown(report["rows"]), "",
              f"Latency: {m['latency']}.", "", "## Targets (ONNX Runtime CPU)", "", targets_markdown(report["targets"])]
    if report.get("sweep"):
        lines += ["", "## Pack length sweep", "", sweep_markdown(report["sweep"], report.get("sweep_best", []))]
    s = report.get("streaming")
    if s:
        lines += ["", "## Camera stream", "",
                  (f"{s['frames']} frames {s['frame_size'][0]}x{s['frame_size'][1]} at {s['target_fps']} FPS on "
                   f"{s['backend']} ({s['lowering']}), {s['tokens_per_frame']} tokens/frame: achieved "
                   f"{s['achieved_fps']} FPS ({'keeps up' if s['keeps_up'] else 'falls behind'}), latency p50 "
                   f"{s['latency_p50_ms']} ms, p95 {s['latency_p95_ms']} ms, p99 {s['latency_p99_ms']} ms; "
                   f"service time {s['service_ms_mean']} ms/frame (sustainable ~{s['sustainable_fps']} FPS).")]
    if report.get("peers"):
        from navit_deploy.bench.peers import peers_markdown

        lines += ["", peers_markdown(report["peers"])]
    if report.get("host_breakdown"):
        lines += ["", "## Host preprocessing breakdown (one thread, ms/image)", "",
                  ("| workload | decode | EXIF orient + copy | resize | patchify | normalize | dominant "
                  "| JPEG draft decode+resize speed-up (x1 / x2 target) |"),
                  "|---|---|---|---|---|---|---|---|"]
        for wl, b in report["host_breakdown"].items():
            ms = b["ms_per_image"]
            d = b.get("jpeg_draft", {})
            sp = " / ".join(f"{v['decode_resize_speedup']}x" for v in d.values()) or "-"
            lines.append(f"| {wl} | {ms['decode']} | {ms['orient_copy']} | {ms['resize']} | {ms['patchify']} | {ms['normalize']} | "
                         f"{b['dominant']} | {sp} |")
    if report.get("skipped"):
        lines += ["", "## Skipped", ""]
        lines += [f"- {s.get('key') or s.get('strategy')}{' / ' + s['workload'] if 'workload' in s else ''}: "
                  f"{s['reason']}" for s in report["skipped"]]
    if report.get("plots"):
        lines += ["", "## Plots", "", ("latency.png: per-pack model latency per backend (log scale) and the camera "
                                       "stream's frame latency; throughput_vs_pack_len.png: images/s against pack "
                                       "capacity (sweep) or mean pack length (strategies); packs.png: the default "
                                       "packing of one workload drawn at its capacity, grey = the padding that "
                                       "cutting packs to their fill removes."), ""]
        lines += [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def _short(r: dict[str, Any]) -> str:
    b = r["backend"].replace("onnxruntime-", "ort-").replace("pytorch-eager", "torch")
    return f"{b} {r['precision']} {r['lowering']}"


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(report, indent=1, default=str))
    return path


def write_plots(report: dict[str, Any], out: Path, picture: dict[str, Any] | None = None) -> list[Path]:
    """``latency.png`` (per-pack latency per backend), ``throughput_vs_pack_len.png``, ``packs.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    rows = [r for r in report["rows"] if r.get("measured")]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    if rows:
        fig, axes = plt.subplots(1, len(workloads) + (1 if report.get("streaming") else 0),
                                 figsize=(4.5 * (len(workloads) + 1), 5.5), squeeze=False)
        for ax, wl in zip(axes[0], workloads):
            rs = [r for r in rows if r["workload"] == wl and r["strategy"] in ("packed", "padded", "single")]
            data = [r.get("latency_samples_ms") or [0.0] for r in rs]
            ax.boxplot(data, showfliers=True)
            ax.set_xticks(range(1, len(rs) + 1))
            ax.set_xticklabels([f"{_short(r)} {r['strategy']}" for r in rs], fontsize=7, rotation=60, ha="right")
            ax.set_yscale("log")
            ax.set_title(f"{wl}: per-pack latency")
            ax.set_ylabel("ms")
        s = report.get("streaming")
        if s:
            ax = axes[0][-1]
            ax.hist(s["latency_ms"], bins=30)
            ax.set_title(f"camera stream {s['target_fps']} FPS: frame latency")
            ax.set_xlabel("ms")
        fig.tight_layout()
        paths.append(out / "latency.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)

    fig = throughput_figure(report)
    paths.append(out / "throughput_vs_pack_len.png")
    fig.savefig(paths[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)

    if picture and picture.get("packs"):
        from navit_deploy.packing.visualize import draw_packs

        n = max(picture["names"]) + 1 if picture["names"] else 0
        names = [picture["names"].get(i, "") for i in range(n)]
        # Packs sharing several images first: they show what packing does; the rest hold one image each.
        packs = sorted(picture["capacity_packs"], key=lambda p: -p.num_images)[:16]
        title = (f"packs.png: workload '{picture['workload']}', {len(picture['packs'])} packs of its default packing "
                 f"({picture['packing']}), drawn at capacity{' (first 16)' if len(packs) < len(picture['capacity_packs']) else ''}")
        paths.append(draw_packs(packs, out / "packs.png", names=names, title=title,
                                capacity=max(p.pack_len for p in picture["capacity_packs"])))
    return paths


_MARKERS = "osv^DPX*<>ph"


def throughput_figure(report: dict[str, Any]):
    """The images/s vs pack length figure: the sweep's lines, or one point per strategy and workload (colour:
    workload, marker: strategy). Legends sit outside the axes and no point carries a text label, so no label
    can overlap another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    if report.get("sweep"):
        for key in dict.fromkeys((r["workload"], r["backend_key"], r["cut"]) for r in report["sweep"]
                                 if r["config"] != "per-image"):
            rs = sorted([r for r in report["sweep"] if (r["workload"], r["backend_key"], r["cut"]) == key
                         and r["config"] != "per-image"], key=lambda r: r["capacity"])
            ax.plot([r["capacity"] for r in rs], [r["images_per_s"] for r in rs], marker="o",
                    linestyle="-" if key[2] else "--", label=f"{key[0]} {key[1]} {'cut' if key[2] else 'padded'}")
        for r in report["sweep"]:
            if r["config"] == "per-image":
                ax.axhline(r["images_per_s"], color="grey", linewidth=0.6)
        ax.set_xlabel("pack capacity (tokens)")
        ax.set_title("throughput vs pack length (grey: one image per pack)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        rows = [r for r in report["rows"] if r.get("measured") and r.get("mean_pack_len")]
        workloads = list(dict.fromkeys(r["workload"] for r in rows))
        strategies = list(dict.fromkeys(r["strategy"] for r in rows))
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, wl in enumerate(workloads):
            rs = [r for r in rows if r["workload"] == wl and r["backend_key"] == "ort-cpu"] or \
                 [r for r in rows if r["workload"] == wl]
            for r in rs:
                ax.scatter(r["mean_pack_len"], r["images_per_s"], color=colours[i % len(colours)],
                           marker=_MARKERS[strategies.index(r["strategy"]) % len(_MARKERS)], s=36)
        handles = [Line2D([], [], color=colours[i % len(colours)], marker="o", linestyle="", label=f"workload {wl}")
                   for i, wl in enumerate(workloads)]
        handles += [Line2D([], [], color="black", marker=_MARKERS[j % len(_MARKERS)], linestyle="",
                           label=f"strategy {s}") for j, s in enumerate(strategies)]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        ax.set_xlabel("mean pack length (tokens)")
        ax.set_title("throughput vs pack length by strategy (run --sweep-pack-len for a sweep)", fontsize=9)
    from matplotlib.ticker import LogFormatter

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    for axis, base in ((ax.xaxis, 2), (ax.yaxis, 10)):  # plain numbers (e.g. 56, 256), not 5.6x10^1, 2^8
        axis.set_major_formatter(LogFormatter(base=base, labelOnlyBase=False))
        axis.set_minor_formatter(LogFormatter(base=base, labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.set_ylabel("images/s")
    fig.tight_layout()
    return fig
