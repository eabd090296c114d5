"""The services sit above the runtime: they run without torch, and the runtime never imports them."""

import subprocess
import sys
import textwrap

HIDE_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is hidden for this test")
sys.meta_path.insert(0, Block())
"""


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", HIDE_TORCH + textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_services_import_without_torch():
    assert _run("""
        import navit_deploy.serve, navit_deploy.serve.server, navit_deploy.serve.client
        import navit_deploy.embed.local, navit_deploy.embed.ray_embed, navit_deploy.commands.serve_cmds
        assert "torch" not in sys.modules
        print("ok")
    """).startswith("ok")


def test_the_runtime_imports_no_service():
    assert _run("""
        import navit_deploy.runtime, navit_deploy.runtime.open, navit_deploy.runtime.onnx_runner
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("starlette", "uvicorn", "pyarrow", "ray")
                     or m.startswith(("navit_deploy.serve", "navit_deploy.embed")))
        assert not bad, bad
        print("ok")
    """).startswith("ok")
