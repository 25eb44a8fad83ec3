"""Runs a test scenario in a child Python process, so a crash, a hang or a corrupted heap shows as
one failed test instead of taking pytest down. The child imports the same fastmlp as the test
process (installed, or the source tree in development) and keeps this process's environment
(so an AddressSanitizer preload reaches it too)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fastmlp

PACKAGE_PARENT = str(Path(fastmlp.__file__).resolve().parents[1])


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    return env


def run_child(script: str, prelude: str = "", timeout: float = 300) -> str:
    """Runs prelude + script (dedented) with `python -c`; asserts a zero exit and returns stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(prelude) + textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=timeout, env=child_env())
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
