"""Keras's ways into a model: layer names, get_layer, per-layer get_weights/set_weights,
get_config/from_config/to_json, save_weights/load_weights (and ModelCheckpoint's
save_weights_only), and model.save refusing names that promise another format."""
import json
import pickle

import numpy as np
import pytest

import fastmlp as fm


def model(seed=0):
    m = fm.Sequential([fm.Dense(6, "relu", input_dim=4), fm.BatchNormalization(), fm.Dropout(0.2),
                       fm.Dense(5, "gelu"), fm.Dense(3, "softmax", name="head")], seed=seed)
    m.compile("adam", "sparse_categorical_crossentropy", device="cpu", dtype="float64")
    return m


def data(rows=32, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 4)), rng.integers(0, 3, rows)


def test_layers_get_keras_names_unique_in_the_model():
    m = model()
    assert [layer.name for layer in m.layers] == ["dense", "batch_normalization", "dropout", "dense_1", "head"]
    assert m.get_layer("dense_1") is m.layers[3] and m.get_layer(index=-1).name == "head"
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        m.get_layer("nope")
    with pytest.raises(ValueError, match="out of range"):
        m.get_layer(index=9)
    with pytest.raises(ValueError, match="one of them"):
        m.get_layer()
    m2 = fm.Sequential([fm.Dense(2, input_dim=2, name="head"), fm.Dense(2), fm.Dense(2, name="dense_2")])
    assert [layer.name for layer in m2.layers] == ["head", "dense", "dense_2"]
    m2.add(fm.Dense(2))  # auto names skip the taken ones
    assert m2.layers[-1].name == "dense_1"


def test_per_layer_weights_are_slices_of_the_models():
    m = model()
    x, y = data()
    m.fit(x, y, epochs=1, verbose=0)
    w = m.get_weights()
    assert [a.shape for a in m.get_layer("dense").get_weights()] == [(4, 6), (6,)]
    bn = m.layers[1].get_weights()
    assert len(bn) == 4 and all(np.array_equal(a, b) for a, b in zip(bn, w[2:6]))
    assert m.layers[2].get_weights() == []
    new = [np.full((5, 3), 0.1), np.arange(3.0)]
    m.get_layer("head").set_weights(new)
    after = m.get_weights()
    assert np.array_equal(after[-2], new[0]) and np.array_equal(after[-1], new[1])
    assert all(np.array_equal(a, b) for a, b in zip(after[:-2], w[:-2]))  # the rest untouched
    with pytest.raises(ValueError, match="shape"):
        m.get_layer("head").set_weights([np.zeros((4, 3)), np.zeros(3)])
    with pytest.raises(ValueError, match="2 weight arrays"):
        m.get_layer("head").set_weights([np.zeros((5, 3))])
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), after))
    with pytest.raises(RuntimeError, match="not in a model"):
        fm.Dense(3).get_weights()


def test_config_and_json_round_trip_to_an_identical_network():
    m = model(seed=7)
    cfg = m.get_config()
    assert cfg["name"] == "sequential" and cfg["seed"] == 7 and len(cfg["layers"]) == 5
    copy = fm.Sequential.from_config(json.loads(m.to_json(indent=1)))
    copy.compile("adam", "sparse_categorical_crossentropy", device="cpu", dtype="float64")
    x, _ = data()
    assert [layer.name for layer in copy.layers] == [layer.name for layer in m.layers]
    np.testing.assert_array_equal(copy.predict(x), m.predict(x))  # same seed: the same initial weights
    with pytest.raises(ValueError, match="layer 1 of the config"):
        fm.Sequential.from_config({"layers": [cfg["layers"][0], {"class": "Conv2D"}]})
    with pytest.raises(ValueError, match="unknown Sequential config fields"):
        fm.Sequential.from_config(dict(cfg, optimizer="adam"))


def test_save_weights_and_load_weights(tmp_path):
    m = model()
    x, y = data()
    m.fit(x, y, epochs=2, verbose=0)
    path = tmp_path / "m.weights.npz"
    m.save_weights(path)
    other = model(seed=3)
    before = other.get_weights()
    other.load_weights(path)
    assert not np.array_equal(before[0], other.get_weights()[0])  # the other seed's weights were replaced
    np.testing.assert_array_equal(other.predict(x), m.predict(x))
    with np.load(path, allow_pickle=False) as npz:  # plain arrays, named by layer
        assert sorted(npz.files)[:2] == ["W0", "W3"]
    with pytest.raises(ValueError, match=".weights.npz"):
        m.save_weights(tmp_path / "m.npz")
    small = fm.Sequential([fm.Dense(2, input_dim=4), fm.Dense(3, "softmax")])
    small.compile("adam", "sparse_categorical_crossentropy", device="cpu", dtype="float64")
    kept = small.get_weights()
    with pytest.raises(ValueError, match="holds arrays"):
        small.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(small.get_weights(), kept))
    (tmp_path / "bad.weights.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read weights"):
        other.load_weights(tmp_path / "bad.weights.npz")


def test_checkpoint_can_save_weights_only(tmp_path):
    m = model()
    x, y = data()
    cb = fm.callbacks.ModelCheckpoint(str(tmp_path / "ep{epoch}.weights.npz"), save_weights_only=True,
                                      monitor="loss")
    m.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    assert cb.last_saved.endswith("ep2.weights.npz")
    other = model(seed=5)
    other.load_weights(cb.last_saved)
    np.testing.assert_array_equal(other.predict(x), m.predict(x))
    with pytest.raises(ValueError, match=".weights.npz"):
        fm.callbacks.ModelCheckpoint(str(tmp_path / "w.fm"), save_weights_only=True)


@pytest.mark.parametrize("name", ["m.keras", "m.h5", "m.PT", "m.onnx", "m.pkl"])
def test_save_refuses_names_promising_another_format(tmp_path, name):
    m = model()
    with pytest.raises(ValueError, match="fastmlp's own format"):
        m.save(tmp_path / name)
    assert not (tmp_path / name).exists()
    with pytest.raises(ValueError, match="fastmlp's own format"):
        fm.callbacks.ModelCheckpoint(str(tmp_path / name))


def test_layers_pickle_without_their_model():
    m = model()
    layer = pickle.loads(pickle.dumps(m.layers[0]))
    assert layer.name == "dense" and layer.units == 6
    with pytest.raises(RuntimeError, match="not in a model"):
        layer.get_weights()


def test_summary_shows_the_resolved_optimizer_and_where_keras_differs():
    m = fm.Sequential([fm.Dense(3, "relu", input_dim=2), fm.Dense(2, "softmax")])
    m.compile("rmsprop", "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
    lines = []
    m.summary(print_fn=lines.append)
    opt = next(line for line in lines if line.startswith("Optimizer: "))
    # PyTorch's defaults, resolved, and Keras's for the same name (lr 0.001, rho 0.9)
    assert "RMSprop(lr=0.01, alpha=0.99, eps=1e-08" in opt and "learning_rate=0.001, rho=0.9" in opt
    assert any(line.startswith("Loss: ") and "accuracy" in line for line in lines)
