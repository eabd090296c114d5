"""Progress on stderr (never on stdout, off when not a terminal unless asked) and the exporter's warning silenced."""

import io
import json
import logging

from navit_deploy.console import TORCHVISION_LOGGER, Progress, progress_enabled, without_torchvision_warning


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_enabled_follows_the_terminal():
    assert progress_enabled("auto", _Tty()) and not progress_enabled("auto", io.StringIO())
    assert progress_enabled("on", io.StringIO()) and not progress_enabled("off", _Tty())


def test_progress_shows_stages_steps_and_an_estimate():
    stream = io.StringIO()
    with Progress("navit deploy", 10.0, enabled=True, stream=stream) as p:
        p.stage("export dense")
        p.advance(4.0)
        with p.steps("bench mixed", 3, "pass") as bar:
            bar.update(1)
            bar.set_postfix_str("ort-cpu packed")
        p.advance(6.0)
    text = stream.getvalue()
    assert "navit deploy: export dense" in text and "left" in text and "ort-cpu packed" in text
    quiet = io.StringIO()
    with Progress("x", 1.0, enabled=False, stream=quiet) as p:
        p.stage("y")
        p.advance(1.0)
        p.write("z")
    assert quiet.getvalue() == ""


def test_torchvision_warning_dropped_only_inside(caplog):
    log = logging.getLogger(TORCHVISION_LOGGER)
    with caplog.at_level(logging.WARNING, logger=TORCHVISION_LOGGER):
        with without_torchvision_warning():
            log.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
            log.warning("something else")
        log.warning("torchvision is not installed. Skipping %s", "torchvision::roi_align")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["something else", "torchvision is not installed. Skipping torchvision::roi_align"]


def test_export_prints_no_torchvision_warning(tiny_model_dir, tmp_path, caplog):
    from navit_deploy.cli import main

    with caplog.at_level(logging.WARNING):
        assert main(["export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "m.onnx")]) == 0
    assert [r for r in caplog.records if r.name.startswith("torch")] == []


def test_bench_progress_on_stderr_json_on_stdout(tiny_model_dir, exported, tmp_path, capsys):
    from navit_deploy.cli import main

    rc = main(["bench", "--model", str(tiny_model_dir), "--onnx", str(exported("dense")), "--out", str(tmp_path),
               "--workloads", "thumbnails", "-n", "3", "--repeats", "2", "--warmup", "0", "--backends", "ort-cpu",
               "--strategies", "packed,single", "--stream-frames", "0", "--no-plots", "--json", "--progress", "on"])
    assert rc == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"]  # stdout is the JSON alone
    assert "bench thumbnails (3 images)" in captured.err and "4/4" in captured.err


def test_steps_move_the_job_bar_through_their_stage():
    stream = io.StringIO()
    with Progress("job", 10.0, enabled=True, stream=stream) as p:
        p.stage("a", 2.0)
        p.finish_stage()
        assert p._bar.n == 2.0
        p.stage("bench", 8.0)
        with p.steps("passes", 4) as bar:
            bar.update(1)
            assert p._bar.n == 4.0  # a quarter of the stage's 8
            bar.update(2)
            assert p._bar.n == 8.0
        p.finish_stage()  # the stage's last quarter, once
        assert p._bar.n == 10.0
        p.finish_stage()
        assert p._bar.n == 10.0
