import subprocess
import sys

import rnnkit


def test_version_command():
    out = subprocess.run([sys.executable, "-m", "rnnkit", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"rnnkit {rnnkit.__version__}"
