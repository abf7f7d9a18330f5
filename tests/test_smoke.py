import subprocess
import sys

import rnnkit


def test_version_command():
    out = subprocess.run([sys.executable, "-m", "rnnkit", "--version"], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == f"rnnkit {rnnkit.__version__}"
    assert lines[1].startswith("torch ") and lines[2].startswith("native kernels: ")
