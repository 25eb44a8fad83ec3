"""The examples of README.md and docs/*.md run, on small data, so they cannot drift from the code.

Every ```python block is executed with exec, in order within its file, in one namespace per file
(a block may use what an earlier block of its file defined), in a temporary working directory, so
files the examples write land there. The namespace starts with small synthetic data under the
names the docs use without defining them:

    np, fm                   numpy and fastmlp
    x, y / xv, yv / xt, yt   MNIST-shaped training / validation / test data: (n, 784) float32 in
                             [0, 1], int64 class ids 0-9
    x2d, y2d                 points in the plane (n, 2) and their 2 classes
    x4, y3                   4 features, 3 classes

fm.datasets.load_mnist returns small synthetic arrays of MNIST's shapes instead of reading (or
downloading) 60,000 images. A block is skipped only for hardware or an optional package that is
absent, as a marker says on the line before its fence, invisible on the rendered page:

    <!-- doc-test: needs cuda -->                 a CUDA GPU
    <!-- doc-test: needs sklearn, matplotlib -->  importable modules

(or the same words in a comment on the block's first line: `# doc-test: needs cuda`).

```bash and ```console blocks run their `fastmlp ...` and `python -m fastmlp ...` commands through
fastmlp.cli.main, offline: $HOME is a temporary folder whose ~/.cache/fastmlp/mnist (and
~/data/mnist) hold tiny MNIST IDX files, $FASTMLP_DATA is unset, and x.npz is in the working
directory. A block with any other command (pip, pytest) is skipped, and the reason names it.
"""
import contextlib
import gzip
import importlib.util
import os
import re
import shlex
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
MARKER = re.compile(r"doc-test:\s*needs\s+(?P<needs>[\w ,.-]+?)\s*(?:-->)?\s*$")
# Each block must stay quick: a few seconds on 2 cores. This is the hard ceiling (a sanitizer build is slower).
BLOCK_SECONDS = 15 * (10 if os.environ.get("FASTMLP_SANITIZER") else 1)
MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ------------------------------------------------------------------------------ finding blocks
class Block:
    def __init__(self, path, lang, index, line, code, needs):
        self.path, self.lang, self.index, self.line, self.code, self.needs = path, lang, index, line, code, needs

    @property
    def name(self):
        return f"{self.path.relative_to(ROOT)}-{self.lang}-{self.index}"

    @property
    def where(self):
        return f"{self.path.relative_to(ROOT)}, line {self.line}"


def _needs(text):
    m = MARKER.search(text)
    return [w.strip() for w in m.group("needs").split(",") if w.strip()] if m else []


def find_blocks(path):
    """The fenced code blocks of a Markdown file (indented ones in lists too), numbered per language."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, counts, i = [], {}, 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group("lang"):
            i += 1
            continue
        indent, lang, start = m.group("indent"), m.group("lang"), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[start + 1:j]]
        previous = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        needs = _needs(previous) if previous.strip().startswith("<!--") else []
        if body and body[0].lstrip().startswith("#"):
            needs += _needs(body[0])
        lang = {"sh": "bash", "shell": "bash"}.get(lang, lang)
        counts[lang] = counts.get(lang, 0) + 1
        blocks.append(Block(path, lang, counts[lang], start + 1, "\n".join(body) + "\n", needs))
        i = j + 1
    return blocks


ALL_BLOCKS = [b for path in DOC_FILES for b in find_blocks(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python"]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("bash", "console")]


def missing_needs(block):
    """Why the block cannot run here (a GPU or a package that is absent), or None."""
    for need in block.needs:
        if need == "cuda":
            if not fm.cuda_is_available():
                return "needs a CUDA GPU"
        elif importlib.util.find_spec(need) is None:
            return f"needs the optional package {need}, which is not installed"
    return None


# ------------------------------------------------------------------------------ small data
def _synthetic_mnist(n, seed):
    """Random 28x28 uint8 images and labels 0-9: nothing to learn, so EarlyStopping stops soon."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def small_load_mnist(path=None, *, flatten=True, normalize=True, download=True):
    """fm.datasets.load_mnist's results with 256 training and 64 test images (MNIST's shapes and types)."""
    out = []
    for n, seed in ((256, 1), (64, 2)):
        images, labels = _synthetic_mnist(n, seed)
        xs = images.reshape(n, -1) if flatten else images
        out.append((xs.astype(np.float32) / np.float32(255) if normalize else xs, labels))
    return tuple(out)


def prelude():
    (x, y), (xt, yt) = small_load_mnist()
    xv, yv = xt[:32], yt[:32]
    rng = np.random.default_rng(0)
    x2d = rng.normal(size=(200, 2)).astype(np.float32)
    y2d = (x2d[:, 0] * x2d[:, 1] > 0).astype(np.int64)
    x4 = rng.normal(size=(150, 4)).astype(np.float32)
    y3 = ((x4[:, 0] > 0).astype(np.int64) + (x4[:, 1] > 0.5)).astype(np.int64)
    return {"__name__": "__doc_example__", "np": np, "fm": fm, "x": x, "y": y, "xv": xv, "yv": yv, "xt": xt,
            "yt": yt, "x2d": x2d, "y2d": y2d, "x4": x4, "y3": y3}


def write_idx_folder(folder, n_train=64, n_test=16):
    folder.mkdir(parents=True, exist_ok=True)
    (xi, yi), (xti, yti) = [_synthetic_mnist(n, seed) for n, seed in ((n_train, 3), (n_test, 4))]
    for stem, arr in zip(MNIST_STEMS, (xi, yi.astype(np.uint8), xti, yti.astype(np.uint8))):
        data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
        (folder / (stem + ".gz")).write_bytes(gzip.compress(data))


# ------------------------------------------------------------------------------ running them
@pytest.fixture
def doc_env(monkeypatch):
    """What every block runs under: small MNIST, no plot windows, one native thread (the data are
    tiny, and on a busy 2-core machine a second thread only waits), the thread count restored."""
    monkeypatch.setattr(fm.datasets, "load_mnist", small_load_mnist)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("FASTMLP_DATA", raising=False)
    threads = fm.get_num_threads()
    fm.set_num_threads(1)
    yield
    fm.set_num_threads(threads)
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@contextlib.contextmanager
def time_limit(block):
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    assert seconds < BLOCK_SECONDS, f"{block.where}: took {seconds:.1f}s; a doc example must stay quick"


_STATE = {}  # doc file -> (index of the last python block run, its namespace, its working directory)


def run_python(block, namespace):
    code = compile(block.code, f"<{block.where}: python block {block.index}>", "exec")
    with time_limit(block):
        exec(code, namespace)


def namespace_before(block, tmp_path_factory, monkeypatch):
    """The file's namespace after its earlier blocks: kept from the previous test when the blocks
    ran in order, else rebuilt by running them again (a block selected alone)."""
    done = _STATE.get(block.path)
    if done is None or done[0] != block.index - 1:
        workdir = tmp_path_factory.mktemp(block.path.stem.lower())
        _STATE[block.path] = (0, prelude(), workdir)
        monkeypatch.chdir(workdir)
        for earlier in PYTHON_BLOCKS:
            if earlier.path == block.path and earlier.index < block.index and missing_needs(earlier) is None:
                try:
                    run_python(earlier, _STATE[block.path][1])
                except Exception as e:  # reported by that block's own test; this one cannot run without it
                    del _STATE[block.path]
                    pytest.fail(f"{earlier.where}: an earlier example of this file failed ({type(e).__name__}: "
                                f"{e}), so {block.where} cannot run")
                _STATE[block.path] = (earlier.index, _STATE[block.path][1], workdir)
    monkeypatch.chdir(_STATE[block.path][2])


@pytest.mark.filterwarnings("ignore:Stochastic optimizer.*maximum iterations")  # scikit-learn's, on purpose
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.name)
def test_python_block(block, doc_env, tmp_path_factory, monkeypatch):
    namespace_before(block, tmp_path_factory, monkeypatch)
    reason = missing_needs(block)
    if reason:
        _STATE[block.path] = (block.index, *_STATE[block.path][1:])  # later blocks go on without it
        pytest.skip(f"{block.where}: {reason}")
    _, namespace, workdir = _STATE.pop(block.path)  # if it fails, the next block rebuilds the namespace
    run_python(block, namespace)
    _STATE[block.path] = (block.index, namespace, workdir)


# ------------------------------------------------------------------------------ shell blocks
FASTMLP_PREFIXES = (["fastmlp"], ["python", "-m", "fastmlp"], ["python3", "-m", "fastmlp"])


def shell_commands(block):
    """[(argv, text)] of the block: console blocks' "$ " lines, continuation lines joined, comments
    dropped, split at ';' and '&&'."""
    joined, buffer, continued = [], "", False
    for line in block.code.splitlines():
        if block.lang == "console" and not continued:  # a command after its prompt; other lines are output
            if not line.startswith("$ "):
                continue
            line = line[2:]
        continued = line.rstrip().endswith("\\")
        if continued:
            buffer += line.rstrip()[:-1] + " "
            continue
        joined.append(buffer + line)
        buffer = ""
    commands = []
    for line in joined:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        argv = []
        for token in list(lexer) + [";"]:
            if token in (";", "&&"):
                if argv:
                    commands.append(argv)
                argv = []
            else:
                argv.append(os.path.expanduser(token) if token.startswith("~") else token)  # as a shell does
    return commands


def _shell_reason(block):
    commands = shell_commands(block)
    if not commands:
        return "has no command"
    for argv in commands:
        if not any(argv[:len(p)] == p for p in FASTMLP_PREFIXES):
            what = " ".join(argv)
            why = ("installing needs the network" if "pip" in argv else
                   "that is the test suite itself" if "pytest" in argv else
                   "a C++ build (tests/test_cmake_package.py builds against the CMake package)" if argv[0] == "cmake"
                   else "not a fastmlp command")
            return f"runs `{what}`: {why}; only fastmlp commands are run here (offline, on small data)"
    if any("digits" in argv or "demo" in argv for argv in commands) and importlib.util.find_spec("sklearn") is None:
        return "needs the optional package sklearn (the digits), which is not installed"
    return None


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=lambda b: b.name)
def test_shell_block(block, doc_env, tmp_path, monkeypatch, capsys):
    reason = _shell_reason(block)
    if reason:
        pytest.skip(f"{block.where}: {reason}")
    home = tmp_path / "home"
    for folder in (home / ".cache" / "fastmlp" / "mnist", home / "data" / "mnist"):
        write_idx_folder(folder)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    x, _ = small_load_mnist()[1]
    np.savez(tmp_path / "x.npz", x=x[:5])

    def offline(url, timeout):
        raise OSError(f"the doc tests are offline (asked for {url})")

    monkeypatch.setattr(fm.datasets, "_urlopen", offline)
    with time_limit(block):
        for argv in shell_commands(block):
            prefix = next(p for p in FASTMLP_PREFIXES if argv[:len(p)] == p)
            rc = cli_main(argv[len(prefix):])
            out, err = capsys.readouterr()
            assert rc == 0, f"{block.where}: `{' '.join(argv)}` exited with {rc}: {err.strip() or out[-2000:]}"
            assert out.strip(), f"{block.where}: `{' '.join(argv)}` printed nothing"


# ------------------------------------------------------------------------------ the harness itself
def test_the_docs_have_examples_and_markers_are_valid():
    names = {str(p.relative_to(ROOT)) for p in DOC_FILES}
    assert {"README.md", "docs/guide.md", "docs/workflow.md"} <= names
    assert len(PYTHON_BLOCKS) >= 15 and len(SHELL_BLOCKS) >= 3
    for block in ALL_BLOCKS:
        for need in block.needs:  # a marker names hardware or a module, nothing else
            assert need == "cuda" or re.fullmatch(r"[A-Za-z_][\w.]*", need), (block.where, need)
    ids = [b.name for b in ALL_BLOCKS]
    assert len(ids) == len(set(ids))
    for block in PYTHON_BLOCKS:  # examples write into the working directory, not elsewhere
        assert not re.search(r"""["']/tmp/""", block.code), block.where


def test_block_extraction(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n```python\na = 1\n```\n\n* item:\n\n  ```python\n  b = 2\n  ```\n"
                   "<!-- doc-test: needs cuda -->\n```python\nc = 3\n```\n```bash\nfastmlp info; fastmlp demo \\\n"
                   "  --epochs 2  # quick\npip install x && fastmlp info\n```\n"
                   "```console\n$ fastmlp info\nfastmlp 0.1\n$ fastmlp train --data mnist \\\n    --epochs 1   # comment\nEpoch 1/1\n```\n")
    blocks = find_blocks(doc)
    assert [(b.lang, b.index, b.line, b.code, b.needs) for b in blocks[:3]] == [
        ("python", 1, 3, "a = 1\n", []), ("python", 2, 9, "b = 2\n", []), ("python", 3, 13, "c = 3\n", ["cuda"])]
    assert shell_commands(blocks[3]) == [["fastmlp", "info"], ["fastmlp", "demo", "--epochs", "2"],
                                         ["pip", "install", "x"], ["fastmlp", "info"]]
    assert "runs `pip install x`" in _shell_reason(blocks[3])
    assert shell_commands(blocks[4]) == [["fastmlp", "info"], ["fastmlp", "train", "--data", "mnist", "--epochs", "1"]]
    assert _shell_reason(blocks[4]) is None
