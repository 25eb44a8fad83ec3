"""Hostile and broken files: saving never follows a planted symlink or leaves temporaries behind;
load_model and read_idx check every declared size before reading or allocating, reject unknown
members and bogus optimizer state, and stay within bounded memory on bombs."""
import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from model_files import read_parts, write_parts
from fastmlp import _atomic_write, saving
from fastmlp.cli import main as cli_main

PYTHON_DIR = str(Path(fm.__file__).resolve().parents[1])
RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 6)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 1).astype(np.int64)


def make(optimizer="adam", hidden=16, seed=1):
    model = fm.Sequential([fm.Dense(hidden, "relu", input_dim=6), fm.Dense(3, "softmax")], seed=seed)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
    return model


def trained(optimizer="adam"):
    model = make(optimizer)
    model.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    return model


def contents(folder):
    return sorted(os.listdir(folder))


def tmpfile_supported(folder):
    try:
        os.close(os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600))
        return True
    except (AttributeError, OSError):
        return False


@pytest.fixture(params=["tmpfile", "named"])
def temp_kind(request, monkeypatch, tmp_path):
    """Runs a test with O_TMPFILE (where the filesystem has it) and with the named-file fallback."""
    if request.param == "named":
        monkeypatch.setattr(_atomic_write, "_O_TMPFILE", 0)
    elif not tmpfile_supported(tmp_path):
        pytest.skip("no O_TMPFILE here")
    return request.param


def run_python(code, *args, timeout=60):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------ saving
def plant(folder, name, victim):
    """Symlinks at the temporary names an attacker could guess for `name`, all pointing at victim."""
    links = [f"{name}.tmp-{os.getpid()}", f"{name}.tmp", f".{name}.tmp", f"{name}.tmp-{os.getppid()}"]
    for link in links:
        os.symlink(victim, folder / link)
    return links


def check_victim(victim, folder, name, links):
    assert victim.read_bytes() == b"precious"
    assert (folder / name).is_file() and not (folder / name).is_symlink()
    assert contents(folder) == sorted(links + [name])  # nothing else left behind
    return fm.load_model(folder / name)


def test_save_does_not_follow_planted_symlinks(tmp_path, temp_kind):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    folder = tmp_path / "models"
    folder.mkdir()
    links = plant(folder, "model.fm", victim)
    model = trained()
    model.save(folder / "model.fm")
    back = check_victim(victim, folder, "model.fm", links)
    assert back.predict(X).tobytes() == model.predict(X).tobytes()
    # a symlink at the model path itself is replaced, its target left alone
    os.symlink(victim, folder / "linked.fm")
    model.save(folder / "linked.fm")
    check_victim(victim, folder, "linked.fm", links + ["model.fm"])


def test_model_checkpoint_and_cli_save_do_not_follow_symlinks(tmp_path, temp_kind, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    ck_dir, cli_dir = tmp_path / "ck", tmp_path / "cli"
    ck_dir.mkdir()
    cli_dir.mkdir()
    ck_links = plant(ck_dir, "best.fm", victim)
    make().fit(X, Y, epochs=2, batch_size=16, verbose=0,
               callbacks=[fm.callbacks.ModelCheckpoint(str(ck_dir / "best.fm"), monitor="loss")])
    check_victim(victim, ck_dir, "best.fm", ck_links)

    cli_links = plant(cli_dir, "cli.fm", victim)
    np.savez(tmp_path / "data.npz", x_train=X, y_train=Y)
    code = cli_main(["train", "--data", str(tmp_path / "data.npz"), "--hidden", "4", "--epochs", "1",
                     "--device", "cpu", "-q", "--save", str(cli_dir / "cli.fm")])
    assert code == 0, capsys.readouterr()
    check_victim(victim, cli_dir, "cli.fm", cli_links)


def test_temporary_names_are_unpredictable_and_never_reused(tmp_path, temp_kind, monkeypatch):
    # the first name drawn is taken by a symlink: the save must draw another, not follow it
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    names = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(_atomic_write.secrets, "token_hex", lambda n: next(names))
    os.symlink(victim, tmp_path / ".m.fm.aaaa.tmp")
    trained().save(tmp_path / "m.fm")
    assert victim.read_bytes() == b"precious"
    assert contents(tmp_path) == [".m.fm.aaaa.tmp", "m.fm", "victim.txt"]
    fm.load_model(tmp_path / "m.fm")


@pytest.mark.parametrize("where", ["writing", "renaming"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_failed_save_leaves_old_file_and_no_temporaries(tmp_path, temp_kind, monkeypatch, where, error):
    path = tmp_path / "model.fm"
    trained().save(path)
    old = path.read_bytes()
    if where == "writing":
        real = zipfile.ZipFile.writestr

        def writestr(self, name, data, *args, **kwargs):
            if name == "arrays.npz":  # midway: the config member is already written
                raise error("disk gone")
            return real(self, name, data, *args, **kwargs)

        monkeypatch.setattr(zipfile.ZipFile, "writestr", writestr)
    else:
        def replace(src, dst):
            assert os.path.exists(src)  # the complete temporary has a name by now
            raise error("rename refused")

        monkeypatch.setattr(saving.os, "replace", replace)
    with pytest.raises(error):
        trained("sgd").save(path)
    assert contents(tmp_path) == ["model.fm"]
    assert path.read_bytes() == old


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_file_gets_the_permissions_open_gives(tmp_path, temp_kind, umask):
    old = os.umask(umask)
    try:
        trained().save(tmp_path / "m.fm")
        with open(tmp_path / "ref", "w"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "m.fm").stat().st_mode & 0o777 == (tmp_path / "ref").stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_rejects_directories_without_leaving_files(tmp_path):
    for target in (tmp_path, str(tmp_path) + os.sep):
        with pytest.raises(IsADirectoryError, match="directory"):
            trained().save(target)
    assert contents(tmp_path) == []


def test_sigkilled_saves_leave_no_orphan_files(tmp_path):
    if not tmpfile_supported(tmp_path):
        pytest.skip("without O_TMPFILE a killed save can leave a named temporary")
    script = """
        import sys
        import fastmlp as fm
        model = fm.Sequential([fm.Dense(384, "relu", input_dim=384), fm.Dense(384), fm.Dense(3, "softmax")], seed=0)
        model.compile("adam", "sparse_categorical_crossentropy", device="cpu")
        model.save(sys.argv[1])
        print("ready", flush=True)
        while True:
            model.save(sys.argv[1])
    """
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    procs = []
    for i in range(4):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        procs.append((folder, subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(folder / "m.fm")],
                                               env=env, stdout=subprocess.PIPE, text=True)))
    try:
        for _, proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for i, (_, proc) in enumerate(procs):  # staggered: kills land at different points of a save
            time.sleep(0.013 * (i + 1))
            proc.send_signal(signal.SIGKILL)
    finally:
        for _, proc in procs:
            proc.kill()
            proc.wait()
            proc.stdout.close()
    for folder, _ in procs:
        assert contents(folder) == ["m.fm"]
        fm.load_model(folder / "m.fm")


def test_model_checkpoint_keeps_its_best_when_the_save_fails(tmp_path, monkeypatch):
    model = make()
    ck = fm.callbacks.ModelCheckpoint(str(tmp_path / "best.fm"), monitor="loss", save_best_only=True)

    def broken(path):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        model.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[ck])
    assert ck.best == np.inf and ck.last_saved is None  # the next improvement is still saved


def test_cli_checks_the_save_path_before_training(tmp_path, capsys):
    np.savez(tmp_path / "data.npz", x_train=X, y_train=Y)
    for target, match in ((tmp_path / "nope" / "m.fm", "does not exist"), (tmp_path, "directory")):
        code = cli_main(["train", "--data", str(tmp_path / "data.npz"), "--hidden", "4", "--epochs", "1",
                         "--device", "cpu", "-q", "--save", str(target)])
        out, err = capsys.readouterr()
        assert code != 0 and match in err
        assert "training" not in out  # failed before the training, not after it
    assert contents(tmp_path) == ["data.npz"]


# ------------------------------------------------------------------------------------ loading
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.fm"
    trained().save(path)
    return path


def test_unknown_members_are_rejected(tmp_path, good):
    cfg, arrays = read_parts(good)
    write_parts(tmp_path / "outer.fm", cfg, arrays, extra=[("payload.bin", b"\0" * 1000)])
    with pytest.raises(ValueError, match=r"outer\.fm: .*unknown member.*payload\.bin"):
        fm.load_model(tmp_path / "outer.fm")
    write_parts(tmp_path / "inner.fm", cfg, {**arrays, "junk": np.zeros(1000, np.float32)})
    with pytest.raises(ValueError, match=r"inner\.fm: .*unknown member.*junk\.npy"):
        fm.load_model(tmp_path / "inner.fm")


def test_arrays_checked_before_the_engine_is_built(tmp_path, good, monkeypatch):
    # a wide layer in the JSON with the small arrays: the shape error comes before any compile
    cfg, arrays = read_parts(good)
    cfg["model"]["layers"][0]["units"] = 4096
    cfg["model"]["layers"][1]["input_dim"] = None
    write_parts(tmp_path / "wide.fm", cfg, arrays)
    compiled = []
    monkeypatch.setattr(fm.Sequential, "compile", lambda self, **kw: compiled.append(kw))
    with pytest.raises(ValueError, match=r"wide\.fm: weight array W0 has shape \(6, 16\), expected \(6, 4096\)"):
        fm.load_model(tmp_path / "wide.fm")
    assert compiled == []


@pytest.mark.parametrize("units", [2 ** 31, 2 ** 40, 10 ** 30])
def test_widths_beyond_the_engine_are_value_errors(tmp_path, good, units):
    cfg, arrays = read_parts(good)
    cfg["model"]["layers"][0]["units"] = units
    write_parts(tmp_path / "huge.fm", cfg, arrays)
    with pytest.raises(ValueError, match=r"huge\.fm: invalid model config.*units"):
        fm.load_model(tmp_path / "huge.fm")


def test_absurd_parameter_counts_are_value_errors(tmp_path, good):
    # each width is a valid C int, but the byte count of the whole model overflows int64
    cfg, arrays = read_parts(good)
    layer = cfg["model"]["layers"][0]
    cfg["model"]["layers"] = [dict(layer, units=2 ** 31 - 1, input_dim=2 ** 31 - 1),
                              dict(layer, units=2 ** 31 - 1, input_dim=None)]
    cfg["compile"] = cfg["built"] = None
    write_parts(tmp_path / "absurd.fm", cfg, {})
    with pytest.raises(ValueError, match=r"absurd\.fm: the model claims an absurd \d+ parameters"):
        fm.load_model(tmp_path / "absurd.fm")


@pytest.mark.parametrize("field, value", [
    (("step",), 2 ** 63), (("step",), -1), (("step",), 1.5), (("step",), 2 ** 64),
    (("model", "seed"), 2 ** 64), (("model", "seed"), -1),
    (("model", "epochs_seen"), 2 ** 64), (("model", "epochs_seen"), 2 ** 63), (("model", "epochs_seen"), True),
])
def test_counters_out_of_range_are_value_errors(tmp_path, good, field, value):
    cfg, arrays = read_parts(good)
    node = cfg
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    write_parts(tmp_path / "counter.fm", cfg, arrays)
    with pytest.raises(ValueError, match=rf"counter\.fm: .*{field[-1]}"):
        fm.load_model(tmp_path / "counter.fm")


def test_bad_schedule_fields_name_the_file(tmp_path, good, monkeypatch):
    cfg, arrays = read_parts(good)
    cfg["compile"]["optimizer"]["schedule"] = {"kind": "cosine", "initial_lr": 0.01, "warmup_steps": 0,
                                               "decay_steps": 100.0, "rate": 1.0, "min_lr": -0.1,
                                               "staircase": False}
    write_parts(tmp_path / "minlr.fm", cfg, arrays)
    with pytest.raises(ValueError, match=r"minlr\.fm: invalid model config .*min_lr"):
        fm.load_model(tmp_path / "minlr.fm")

    # whatever a config check raises (ValueError or TypeError) comes out naming the file
    for exc in (ValueError("decay_rate must be positive"), TypeError("bad type")):
        def reject(config, exc=exc):
            raise exc
        monkeypatch.setattr(fm.schedules, "from_config", reject)
        with pytest.raises(ValueError, match=rf"good\.fm: invalid model config .*{exc}"):
            fm.load_model(good)


def with_state(tmp_path, optimizer, edit):
    model = trained(optimizer)
    path = tmp_path / "state.fm"
    model.save(path)
    cfg, arrays = read_parts(path)
    n = model._engine.num_params
    state = arrays["optimizer_state"].copy()
    edit(state, n)
    write_parts(path, cfg, {**arrays, "optimizer_state": state})
    return path


def _set_slot(slot, value):
    def edit(state, n):
        state[slot * n + 3] = value
    return edit


@pytest.mark.parametrize("optimizer, slot, value", [
    (fm.optimizers.Adam(amsgrad=True), 0, np.nan),
    (fm.optimizers.Adam(), 1, np.inf),
    (fm.optimizers.Adam(), 1, -1.0),
    (fm.optimizers.AdamW(amsgrad=True), 2, -1e-3),
    (fm.optimizers.Adagrad(), 0, -0.5),
    (fm.optimizers.RMSprop(centered=True, momentum=0.9), 0, -0.5),
    (fm.optimizers.Adadelta(), 0, -0.5),
    (fm.optimizers.Adadelta(), 1, -0.5),
    (fm.optimizers.SGD(momentum=0.9), 0, np.nan),
    (fm.optimizers.NAdam(), 1, -0.5),
    (fm.optimizers.RAdam(), 1, -0.5),
    (fm.optimizers.LAMB(), 1, -0.5),
])
def test_bad_optimizer_state_is_rejected(tmp_path, optimizer, slot, value):
    path = with_state(tmp_path, optimizer, _set_slot(slot, value))
    with pytest.raises(ValueError, match=rf"state\.fm: optimizer_state slot {slot} "):
        fm.load_model(path)


@pytest.mark.parametrize("optimizer, slot", [
    (fm.optimizers.Adam(amsgrad=True), 0),           # m: a signed average
    (fm.optimizers.RMSprop(centered=True, momentum=0.9), 1),  # the centered gradient average
    (fm.optimizers.RMSprop(centered=True, momentum=0.9), 2),  # the momentum buffer
    (fm.optimizers.SGD(momentum=0.9), 0),
])
def test_signed_optimizer_state_may_be_negative(tmp_path, optimizer, slot):
    path = with_state(tmp_path, optimizer, _set_slot(slot, -0.25))
    engine = fm.load_model(path)._engine
    assert engine.get_state()[slot * engine.num_params + 3] == -0.25


def test_leaky_relu_zero_slope_survives_save_and_load(tmp_path):
    model = fm.Sequential([fm.Dense(8, fm.activations.LeakyReLU(0.0), input_dim=6), fm.Dense(3, "softmax")], seed=2)
    model.compile("adam", "sparse_categorical_crossentropy", device="cpu")
    model.save(tmp_path / "leaky.fm")
    back = fm.load_model(tmp_path / "leaky.fm")
    assert back.layers[0].activation == fm.activations.LeakyReLU(0.0)
    assert repr(back.layers[0].activation) == "LeakyReLU(0.0)"
    x = -np.abs(X)  # negative inputs: a 0.01 slope would show
    assert back.predict(x).tobytes() == model.predict(x).tobytes()


@pytest.mark.parametrize("param", [float("inf"), float("nan"), "0.5", True])
def test_bad_activation_params_name_the_file(tmp_path, good, param):
    cfg, arrays = read_parts(good)
    cfg["model"]["layers"][0]["activation"] = {"name": "leaky_relu", "param": param}
    write_parts(tmp_path / "act.fm", json.dumps(cfg), arrays)
    with pytest.raises(ValueError, match=r"act\.fm: invalid model config"):
        fm.load_model(tmp_path / "act.fm")


def test_json_nesting_bomb_is_a_value_error(tmp_path):
    with zipfile.ZipFile(tmp_path / "deep.fm", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fastmlp.json", "[" * 200_000)
    with pytest.raises(ValueError, match=r"deep\.fm: .*not valid JSON"):
        fm.load_model(tmp_path / "deep.fm")


def test_declared_member_sizes_must_be_possible(tmp_path, good):
    # a stored member that claims more than it holds, patched in the central directory
    cfg, arrays = read_parts(good)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with zipfile.ZipFile(tmp_path / "claim.fm", "w") as zf:  # stored
        zf.writestr("fastmlp.json", json.dumps(cfg))
        zf.writestr("arrays.npz", buf.getvalue())
    blob = bytearray((tmp_path / "claim.fm").read_bytes())
    central = blob.rfind(b"PK\x01\x02")  # the last central directory entry: arrays.npz
    assert blob[central + 46:central + 56] == b"arrays.npz"
    blob[central + 24:central + 28] = struct.pack("<I", 0xFFFF_FFF0)  # uncompressed size
    (tmp_path / "claim.fm").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"claim\.fm: corrupt model file: .*arrays\.npz"):
        fm.load_model(tmp_path / "claim.fm")


# ASan (.ci/sanitize) reserves terabytes of address space and pads every allocation: the limits
# and peak-memory figures below mean nothing under it.
no_sanitizer = pytest.mark.skipif(bool(os.environ.get("FASTMLP_SANITIZER")),
                                  reason="memory bounds are not measurable under AddressSanitizer")


# Each bomb is loaded in a fresh process under an address-space limit, so a regression fails
# the test instead of taking the machine down; peak RSS growth must stay far below the claims.
# VmHWM, not ru_maxrss: a child's ru_maxrss starts at the peak of the (large) pytest process.
MEASURE = """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    import numpy as np
    import fastmlp as fm

    def peak():
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    before = peak()
    try:
        {call}
        outcome = "loaded"
    except ValueError as e:
        outcome = "ValueError: " + str(e)
    except MemoryError as e:
        outcome = "MemoryError"
    grew = (peak() - before) / 1024
    print(json.dumps({{"outcome": outcome, "grew_mb": grew}}))
"""


def measure(call, *args):
    out = run_python(MEASURE.format(call=call), *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


BOMB = 128 << 20  # 128 MiB of zeros: about 130 KB deflated


def bomb_file(path, cfg, arrays, junk_bytes):
    """A model file whose arrays.npz is the real npz followed by `junk_bytes` zeros of junk
    (as an extra npz array), streamed through zipfile so it costs little to build."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fastmlp.json", json.dumps(cfg))
        with zf.open("arrays.npz", "w", force_zip64=True) as raw:
            with zipfile.ZipFile(raw, "w") as npz:  # stored, as np.savez writes it
                for key, arr in arrays.items():
                    with npz.open(key + ".npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, arr)
                if junk_bytes:
                    with npz.open("junk.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                                 "shape": (junk_bytes,)})
                        chunk = bytes(1 << 22)
                        for _ in range(junk_bytes // len(chunk)):
                            f.write(chunk)
    return path


@no_sanitizer
def test_load_model_bombs_stay_in_bounded_memory(tmp_path, good):
    cfg, arrays = read_parts(good)
    # 1. an npz carrying a 128 MiB junk array (the old code loaded and kept it)
    junk = bomb_file(tmp_path / "junk.fm", cfg, arrays, BOMB)
    # 2. arrays.npz declaring 128 MiB that is not even an npz (the old code read it whole first)
    with zipfile.ZipFile(tmp_path / "blob.fm", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fastmlp.json", json.dumps(cfg))
        with zf.open("arrays.npz", "w", force_zip64=True) as f:
            for _ in range(BOMB >> 22):
                f.write(bytes(1 << 22))
    # 3. a few KB claiming 8192-unit layers (the old code built that engine before any check)
    wide = json.loads(json.dumps(cfg))
    wide["model"]["layers"] = [dict(cfg["model"]["layers"][0], units=8192),
                               dict(cfg["model"]["layers"][0], units=8192, input_dim=None),
                               dict(cfg["model"]["layers"][1], input_dim=None)]
    write_parts(tmp_path / "wide.fm", wide, arrays)
    for path in (junk, tmp_path / "blob.fm", tmp_path / "wide.fm"):
        assert path.stat().st_size < 400_000
        got = measure("fm.load_model(sys.argv[1])", path)
        assert got["grew_mb"] < 100, (path.name, got)
        assert got["outcome"].startswith(f"ValueError: {path}: "), (path.name, got)


@no_sanitizer
def test_load_model_memory_stays_near_the_model_size(tmp_path):
    # 4.2M float32 parameters + Adam state: the model holds S = 48 MiB. Beyond what its engine
    # takes anyway (measured by building the same model), a load may use less than S more; the
    # old code held the raw npz, all arrays and a concatenated copy at once (about 1.4 S more).
    build = ("m = fm.Sequential([fm.Dense(2048, 'relu', input_dim=6), fm.Dense(2048, 'relu'), "
             "fm.Dense(3, 'softmax')], seed=0); m.compile('adam', 'sparse_categorical_crossentropy', device='cpu')")
    ns = {"fm": fm}
    exec(build, ns)
    model = ns["m"]
    model.set_weights([np.full_like(w, 0.5) for w in model.get_weights()])  # compresses fast
    model.save(tmp_path / "big.fm")
    size_mb = model._engine.num_params * 4 * 3 / 2 ** 20
    del model, ns
    engine = measure(build)
    got = measure("m = fm.load_model(sys.argv[1]); assert m.get_weights()[0][0, 0] == 0.5", tmp_path / "big.fm")
    assert got["outcome"] == "loaded" and engine["outcome"] == "loaded", (got, engine)
    assert got["grew_mb"] - engine["grew_mb"] < size_mb, (got, engine, size_mb)


@no_sanitizer
def test_read_idx_gzip_bomb_stays_in_bounded_memory(tmp_path):
    path = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + bytes(10))
        for _ in range(BOMB >> 22):
            f.write(bytes(1 << 22))
    assert path.stat().st_size < 1_000_000
    got = measure("fm.datasets.read_idx(sys.argv[1])", path)
    assert got["grew_mb"] < 100, got
    assert got["outcome"].startswith(f"ValueError: {path}: ") and "trailing bytes" in got["outcome"], got


def test_read_idx_checks_the_header_before_allocating(tmp_path):
    # claims 2**32 x 2**32 x 2**32 bytes in a few bytes: a ValueError, never a MemoryError
    blob = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1) + b"abc"
    for data in (blob, gzip.compress(blob)):
        with pytest.raises(ValueError, match="short data"):
            fm.datasets.read_idx(data)
    # a gzip stream cut short, and one whose data is damaged, are reported as such
    ok = gzip.compress(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 4000) + bytes(range(250)) * 16)
    with pytest.raises(ValueError, match="corrupt gzip|short data"):
        fm.datasets.read_idx(ok[:-100])
    damaged = bytearray(ok)
    damaged[-8] ^= 0xFF  # the CRC
    with pytest.raises(ValueError, match="corrupt gzip"):
        fm.datasets.read_idx(bytes(damaged))
    assert fm.datasets.read_idx(ok).shape == (4000,)
