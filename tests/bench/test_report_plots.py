"""Benchmark plots: no text of the throughput figure overlaps another."""

import itertools

import pytest

pytest.importorskip("matplotlib")

from navit_deploy.bench.report import throughput_figure  # noqa: E402


def _rows():
    # Close points, as measured: packed, padded and square sit near the same mean pack length and rate.
    where = {"packed": (250, 40.0), "padded": (256, 39.0), "square": (256, 41.0), "single": (60, 12.0),
             "pad-longest": (248, 38.0)}
    return [{"workload": wl, "strategy": s, "backend_key": "ort-cpu", "measured": True,
             "mean_pack_len": x * (1 + 0.05 * w), "images_per_s": y * (1 + 0.03 * w)}
            for w, wl in enumerate(["mixed", "documents", "thumbnails"]) for s, (x, y) in where.items()]


def _overlaps(fig) -> list[tuple[str, str]]:
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    canvas = fig.bbox
    boxes = [(t.get_text(), b) for t in texts if (b := t.get_window_extent(renderer)).overlaps(canvas)
             and b.width > 1]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


@pytest.mark.parametrize("sweep", [False, True])
def test_throughput_labels_do_not_overlap(sweep):
    report = {"rows": _rows(), "sweep": []}
    if sweep:
        report["sweep"] = [{"workload": wl, "backend_key": "ort-cpu", "cut": cut, "config": f"cap {c}", "capacity": c,
                            "images_per_s": 30.0 + c / 100} for wl in ("mixed", "documents", "thumbnails")
                           for cut in (True, False) for c in (64, 128, 256, 512, 1024)]
    assert _overlaps(throughput_figure(report)) == []
