"""The runtime must import and run where torch is not installed."""

import subprocess
import sys
import textwrap


def test_runtime_runs_with_torch_hidden(exported):
    path = exported("dense")
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is hidden for this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from PIL import Image
        from navit_deploy.runtime import Pipeline
        from navit_deploy.runtime.open import open_runner, pipeline_for
        runner, art = open_runner({str(path)!r})
        with runner:
            res = pipeline_for(runner, art).run([Image.new("RGB", (320, 200), (200, 10, 10)), b"bad"])
        assert res[0].ok and not res[1].ok, res
        assert "torch" not in sys.modules
        print("ok", res[0].tokens)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
