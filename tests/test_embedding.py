"""The C++ core embeds without Python: build examples/xor.cpp against it and run it."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_xor_example_builds_and_learns(tmp_path):
    build = tmp_path / "build"
    configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-DFASTMLP_PYTHON=OFF", "-DFASTMLP_CUDA=OFF",
                 "-DFASTMLP_EXAMPLES=ON", f"-DPython_EXECUTABLE={sys.executable}"]
    subprocess.run(configure, check=True, capture_output=True, text=True)
    jobs = str(os.cpu_count() or 1)
    result = subprocess.run(["cmake", "--build", str(build), "--target", "xor_example", "-j", jobs],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = subprocess.run([str(build / "xor_example")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4/4 correct" in run.stdout
