"""The command line as a new user meets it: help on every option, clean errors, exit codes CI can gate on."""

import json

import pytest

from navit_deploy.cli import main


def _bench_report(passed: bool) -> dict:
    check = {"target": "packed >= 1.5x single", "value": "1.2x", "passed": passed}
    return {"rows": [], "sweep": [], "sweep_best": [], "streaming": None, "targets": [
        {"workload": "mixed", "checks": [check], "info": []}], "skipped": [], "plots": []}


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_bench_check_exits_1_on_a_miss(monkeypatch, tmp_path, capsys, json_flag):
    import navit_deploy.bench.suite as suite

    args = ["bench", "--out", str(tmp_path), *json_flag]
    monkeypatch.setattr(suite, "run_bench", lambda cfg: _bench_report(passed=False))
    assert main(args) == 0  # without --check a miss is reported, not gated on
    assert main([*args, "--check"]) == 1
    assert "1 target(s) missed: mixed: packed >= 1.5x single" in capsys.readouterr().err
    monkeypatch.setattr(suite, "run_bench", lambda cfg: _bench_report(passed=True))
    assert main([*args, "--check"]) == 0
