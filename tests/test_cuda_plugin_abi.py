"""The core loads a CUDA plugin only if it was compiled against the same Backend interface
(FASTMLP_BACKEND_ABI, a hash of the headers that define it and of math.h's formulas): a stale
libfastmlp_cuda.so would otherwise call the wrong virtual functions. A fake plugin, compiled here with the C compiler,
reports another fingerprint; the core must refuse it with a clear reason instead of using it."""
import json
import shutil
import subprocess
import sys

import pytest

from child_process import child_env

FAKE_PLUGIN = r"""
#include <stddef.h>
#include <string.h>
const char* fastmlp_cuda_abi(void) { return "0000000000000000"; }
int fastmlp_cuda_query(char* d, size_t dl, char* b, size_t bl, char* r, size_t rl) {
  strncpy(d, "fake GPU", dl); strncpy(b, "fake build", bl); strncpy(r, "", rl); return 1;
}
void* fastmlp_cuda_create(int index, const char* precision, char* error, size_t error_len) { return (void*)16; }
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_plugin_built_from_other_headers_is_refused(tmp_path):
    source, library = tmp_path / "fake.c", tmp_path / "libfake_cuda.so"
    source.write_text(FAKE_PLUGIN)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    env = dict(child_env(), FASTMLP_CUDA_PLUGIN=str(library))
    script = """
import json, fastmlp as fm
info = fm._core.cuda_info()
out = {"available": info["available"], "reason": info["reason"]}
try:
    m = fm.Sequential([fm.Dense(2, input_dim=2)]); m.compile("sgd", "mse", device="cuda")
    out["compiled"] = True
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr  # refused, not crashed on the fake backend pointer
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["available"] is False and "compiled" not in out
    assert "built from other sources" in out["reason"] and "0000000000000000" in out["reason"]
    assert "built from other sources" in out["error"]
