"""Process-wide defaults set when rnnkit is imported, and their environment switches."""

import os
import subprocess
import sys

import pytest
import torch

import rnnkit  # noqa: F401  (applies the defaults)
from rnnkit import runtime


def _in_fresh_process(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", "import rnnkit, torch\n" + code], capture_output=True, text=True,
                            env={**os.environ, **env}, check=True)
    return result.stdout.strip()


def test_denormals_are_flushed_unless_turned_off():
    denormal = "print((torch.tensor([1e-39]) * 1.0).item())"
    assert float(_in_fresh_process(denormal)) == 0.0
    assert float(_in_fresh_process(denormal, RNNKIT_FLUSH_DENORMAL="0")) == pytest.approx(1e-39, rel=1e-3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_memory_is_kept_unless_turned_off():
    check = "from rnnkit import runtime; print(runtime.keeps_memory)"
    if not runtime.keeps_memory:
        pytest.skip("C library is not glibc")
    assert _in_fresh_process(check) == "True"
    assert _in_fresh_process(check, RNNKIT_KEEP_MEMORY="0") == "False"
    x = torch.randn(4096, 4096)  # 64 MB: still allocates and frees normally
    assert torch.equal(x.clone(), x)
