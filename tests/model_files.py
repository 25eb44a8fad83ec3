"""Reading and rewriting the two members of a .fm model file, for tests that craft bad files."""
import io
import json
import zipfile

import numpy as np


def read_parts(path):
    with zipfile.ZipFile(path) as zf:
        cfg = json.loads(zf.read("fastmlp.json"))
        with np.load(io.BytesIO(zf.read("arrays.npz"))) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return cfg, arrays


def write_parts(dst, cfg, arrays, extra=()):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fastmlp.json", cfg if isinstance(cfg, str) else json.dumps(cfg))
        zf.writestr("arrays.npz", buf.getvalue())
        for name, data in extra:
            zf.writestr(name, data)
    return dst
