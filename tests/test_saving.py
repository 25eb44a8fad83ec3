"""model.save / fm.load_model: exact round trips, bit-exact resumed training, safe failure modes."""
import io
import json
import zipfile

import numpy as np
import pytest

import fastmlp as fm

RNG = np.random.default_rng(0)
X = RNG.normal(size=(240, 6)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)


def make(optimizer=None, seed=7, dtype="float32", metrics=("accuracy",)):
    model = fm.Sequential([fm.Dense(16, "relu", input_dim=6, kernel_regularizer=fm.regularizers.L2(1e-4)),
                           fm.Dense(8, fm.activations.LeakyReLU(0.2)),
                           fm.Dense(3, "softmax")], seed=seed, name="net")
    opt = optimizer or fm.optimizers.Adam(lr=fm.schedules.ExponentialDecay(1e-2, decay_steps=5, decay_rate=0.9),
                                          amsgrad=True)
    model.compile(opt, "sparse_categorical_crossentropy", metrics=list(metrics), device="cpu", dtype=dtype)
    return model


def assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for p, q in zip(wa, wb):
        assert p.dtype == q.dtype and p.shape == q.shape
        assert p.tobytes() == q.tobytes()  # bitwise


def test_round_trip_is_exact(tmp_path):
    model = make()
    model.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path / "model.fm"
    model.save(path)
    loaded = fm.load_model(path)
    assert_same_weights(model, loaded)
    assert loaded.predict(X).tobytes() == model.predict(X).tobytes()
    assert loaded.evaluate(X, Y) == model.evaluate(X, Y)
    assert loaded.seed == model.seed and loaded.name == "net" and loaded._epochs_seen == 2
    assert loaded._engine.step == model._engine.step > 0
    assert loaded._engine.get_state().tobytes() == model._engine.get_state().tobytes()
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert [l.get_config() for l in loaded.layers] == [l.get_config() for l in model.layers]
    assert loaded.history.history["loss"] == model.history.history["loss"]
    assert zipfile.is_zipfile(path) and sorted(zipfile.ZipFile(path).namelist()) == ["arrays.npz", "fastmlp.json"]


@pytest.mark.parametrize("optimizer", [
    None,
    fm.optimizers.SGD(lr=0.05, momentum=0.9, nesterov=True),
    fm.optimizers.RMSprop(lr=1e-3, centered=True, momentum=0.5),
])
def test_resumed_training_is_bit_identical(tmp_path, optimizer):
    import copy

    straight = make(copy.deepcopy(optimizer))
    straight.fit(X, Y, epochs=4, batch_size=32, verbose=0)
    first = make(copy.deepcopy(optimizer))
    first.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    first.save(tmp_path / "half.fm")
    resumed = fm.load_model(tmp_path / "half.fm")
    resumed.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    assert_same_weights(straight, resumed)
    assert resumed._engine.step == straight._engine.step


def test_float64_and_unbuilt_and_uncompiled_models(tmp_path):
    m64 = make(dtype="float64")
    m64.fit(X, Y, epochs=1, batch_size=64, verbose=0)
    m64.save(tmp_path / "m64.fm")
    back = fm.load_model(tmp_path / "m64.fm")
    assert back.get_weights()[0].dtype == np.float64
    assert_same_weights(m64, back)

    raw = fm.Sequential([fm.Dense(4, "tanh"), fm.Dense(1, "sigmoid")], seed=3)
    raw.save(tmp_path / "raw.fm")
    back = fm.load_model(tmp_path / "raw.fm")
    assert back._compile_args is None and [l.units for l in back.layers] == [4, 1] and back.seed == 3

    lazy = fm.Sequential([fm.Dense(4, "tanh"), fm.Dense(1, "sigmoid")], seed=3)
    lazy.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
    lazy.save(tmp_path / "lazy.fm")
    back = fm.load_model(tmp_path / "lazy.fm")
    assert not back.built and back.loss.name == "binary_crossentropy"


def test_compile_false_restores_weights_but_fresh_optimizer(tmp_path):
    model = make()
    model.fit(X, Y, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "m.fm")
    fresh = fm.load_model(tmp_path / "m.fm", compile=False)
    assert_same_weights(model, fresh)
    assert fresh._engine.step == 0 and not fresh._engine.get_state().any()


def test_save_rejects_non_models(tmp_path):
    from fastmlp.saving import save_model

    with pytest.raises(TypeError, match="Sequential"):
        save_model(object(), tmp_path / "x.fm")


# ---------------------------------------------------------------------------------- bad files
@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.fm"
    model = make()
    model.fit(X, Y, epochs=1, batch_size=32, verbose=0)
    model.save(path)
    return path


def rewrite(src, dst, json_fn=None, arrays_fn=None, drop=()):
    with zipfile.ZipFile(src) as zf:
        cfg = json.loads(zf.read("fastmlp.json"))
        with np.load(io.BytesIO(zf.read("arrays.npz"))) as npz:
            arrays = {k: npz[k] for k in npz.files}
    if json_fn:
        cfg = json_fn(cfg)
    if arrays_fn:
        arrays = arrays_fn(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with zipfile.ZipFile(dst, "w") as zf:
        if "fastmlp.json" not in drop:
            zf.writestr("fastmlp.json", cfg if isinstance(cfg, str) else json.dumps(cfg))
        if "arrays.npz" not in drop:
            zf.writestr("arrays.npz", buf.getvalue())
    return dst


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fm.load_model(tmp_path / "nope.fm")


def test_empty_text_truncated_and_corrupted_files(tmp_path, good_file):
    cases = {"empty.fm": b"", "text.fm": b"hello, I am a text file\n",
             "truncated.fm": good_file.read_bytes()[: good_file.stat().st_size // 2]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError) as info:
            fm.load_model(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
    # flip bytes inside the compressed payload: zip CRC or decoding catches it
    blob = bytearray(good_file.read_bytes())
    start = blob.find(b"arrays.npz") + 40
    for i in range(start, start + 64):
        blob[i] ^= 0xFF
    (tmp_path / "flipped.fm").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupt|not a fastmlp|invalid"):
        fm.load_model(tmp_path / "flipped.fm")
    with pytest.raises(ValueError, match="directory"):
        fm.load_model(tmp_path)


def test_foreign_zip_and_bad_json(tmp_path, good_file):
    with zipfile.ZipFile(tmp_path / "foreign.zip", "w") as zf:
        zf.writestr("readme.txt", "not a model")
    with pytest.raises(ValueError, match="no fastmlp.json"):
        fm.load_model(tmp_path / "foreign.zip")
    rewrite(good_file, tmp_path / "badjson.fm", json_fn=lambda c: "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        fm.load_model(tmp_path / "badjson.fm")
    rewrite(good_file, tmp_path / "notag.fm", json_fn=lambda c: {"hello": 1})
    with pytest.raises(ValueError, match="format tag"):
        fm.load_model(tmp_path / "notag.fm")
    rewrite(good_file, tmp_path / "future.fm", json_fn=lambda c: {**c, "format_version": 99})
    with pytest.raises(ValueError, match="upgrade"):
        fm.load_model(tmp_path / "future.fm")


def _set(path, value):
    def fn(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return cfg
    return fn


@pytest.mark.parametrize("edit, match", [
    (_set(("model", "layers"), []), "no layers"),
    (_set(("model", "layers", 0, "units"), -3), "invalid model config"),
    (_set(("model", "layers", 0, "activation", "name"), "os.system"), "invalid model config"),
    (_set(("compile", "optimizer", "kind"), "evil"), "invalid model config"),
    (_set(("compile", "loss"), "x"), "invalid model config"),
    (_set(("model", "seed"), "zero"), "seed"),
    (_set(("step",), -1), "step"),
    (_set(("state_slots",), 9), "slots"),
    (lambda c: {k: v for k, v in c.items() if k != "model"}, "invalid model config"),
])
def test_invalid_config_values(tmp_path, good_file, edit, match):
    bad = rewrite(good_file, tmp_path / "bad.fm", json_fn=edit)
    with pytest.raises(ValueError, match=match):
        fm.load_model(bad)


@pytest.mark.parametrize("edit, match", [
    (lambda a: {**a, "W0": np.zeros((5, 16), np.float32)}, r"W0 has shape \(5, 16\)"),
    (lambda a: {**a, "b1": a["b1"].astype(np.float64)}, "dtype"),
    (lambda a: {k: v for k, v in a.items() if k != "W2"}, "W2 is missing"),
    (lambda a: {**a, "optimizer_state": a["optimizer_state"][:-1]}, "optimizer_state has shape"),
    (lambda a: {k: v for k, v in a.items() if k != "optimizer_state"}, "optimizer_state array is missing"),
    (lambda a: {**a, "b0": np.full_like(a["b0"], np.nan)}, "NaN"),
])
def test_wrong_arrays(tmp_path, good_file, edit, match):
    bad = rewrite(good_file, tmp_path / "bad.fm", arrays_fn=edit)
    with pytest.raises(ValueError, match=match):
        fm.load_model(bad)


def test_pickled_arrays_are_refused(tmp_path, good_file):
    def add_object(arrays):
        arrays = dict(arrays)
        arrays["W0"] = np.array([{"a": 1}], dtype=object)
        return arrays

    bad = rewrite(good_file, tmp_path / "pickle.fm", arrays_fn=add_object)
    with pytest.raises(ValueError, match="could not be read"):
        fm.load_model(bad)
    bad = rewrite(good_file, tmp_path / "noarrays.fm", drop=("arrays.npz",))
    with pytest.raises(ValueError, match="W0 is missing"):
        fm.load_model(bad)
