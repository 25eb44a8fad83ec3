"""Training with Dropout, BatchNormalization, LayerNormalization and Activation on the CPU.

* train_on_batch and fit, step by step, against the reference's optimizer steps (SGD with
  momentum, Adam with weight decay): every weight after every step, the moving statistics
  included, in float64 (1e-10) and float32 (1e-5); the last batch of an epoch may be one row.
* Seeded training is bit-reproducible; save/load in the middle of training resumes bit for bit.
* The rest of the API with these layers: summary, count_params, get/set_weights, the undo of a
  non-finite train_on_batch step, streaming, resident datasets, EarlyStopping.
"""
import numpy as np
import pytest

import fastmlp as fm
import reference as ref
from test_layers import BN, DO, K, LN, N_IN, TOL, A, D, arch, build, features, labels, random_weights
from test_reference import assert_all_close

OPTS = {"sgd": (lambda: fm.optimizers.SGD(lr=0.05, momentum=0.9), lambda: ref.Optimizer("sgd", 0.05, momentum=0.9)),
        "adam": (lambda: fm.optimizers.Adam(lr=0.01, weight_decay=0.01),
                 lambda: ref.Optimizer("adam", 0.01, weight_decay=0.01))}
TRAIN_ARCHS = [("mixed", "softmax"), ("bn_middle", "bn_output"), ("dropout_middle", "relu_then_softmax"),
               ("ln_middle", "hinge"), ("activation_fused", "logits"), ("bn_first", "dropout_before_output"),
               ("bn_scale_only_first", "softmax_after_bn"), ("bn_frozen_statistics", "softmax_after_dropout")]
TRAIN_CASES = [(a, o, d) for a in TRAIN_ARCHS for o in OPTS for d in TOL if d == "float64" or o == "adam"]


def moved(a, b):
    return max(np.abs(p - q).max() for p, q in zip(a, b))


@pytest.mark.parametrize("body_head,opt,dtype", TRAIN_CASES, ids=[f"{a[0]}-{a[1]}-{o}-{d}" for a, o, d in TRAIN_CASES])
def test_train_on_batch_matches_reference_step_by_step(body_head, opt, dtype):
    spec, loss, logits = arch(*body_head)
    rng = np.random.default_rng(20)
    m, spec = build(spec, loss, optimizer=OPTS[opt][0](), dtype=dtype, from_logits=logits, seed=7)
    w0 = random_weights(spec, rng, dtype)
    m.set_weights(w0)
    data = [(features(rng, n, dtype), labels(loss, n, rng, dtype)) for n in (8, 5, 1, 8, 3)]
    want = []
    _, want_losses = ref.train_steps(spec, w0, data, loss, OPTS[opt][1](), on_step=want.append)
    for i, (x, y) in enumerate(data):
        assert m.train_on_batch(x, y) == pytest.approx(want_losses[i], rel=TOL[dtype])
        assert m._engine.step == i + 1
        assert_all_close(m.get_weights(), want[i], TOL[dtype], f"step {i + 1}")
    assert moved(m.get_weights(), w0) > 1e-3
    # the moving statistics moved, except with momentum 1, which keeps them exactly
    momenta = [ref.layer(e).momentum if n.startswith("moving_") else None for e in spec for n in ref.weight_names(e)]
    for a, b, mom in zip(m.get_weights(), w0, momenta):
        if mom is not None:
            assert np.array_equal(a, b) if mom == 1.0 else np.abs(a - b).max() > 1e-3


FIT_SPEC = [D(6), BN(0.8), A("tanh"), DO(0.3), D(5, "elu", 1.0, 0.0, 1e-3), LN(), DO(0.2, 17), D(K, "softmax")]


FIT_CASES = [("sgd", False, "float64"), ("sgd", True, "float64"), ("adam", False, "float64"),
             ("adam", True, "float64"), ("adam", True, "float32"), ("sgd", False, "float32")]


@pytest.mark.parametrize("opt,shuffle,dtype", FIT_CASES, ids=[f"{o}-{'shuffle' if s else 'ordered'}-{d}"
                                                              for o, s, d in FIT_CASES])
def test_fit_matches_reference_step_by_step(opt, shuffle, dtype):
    """13 rows in batches of 4: the last batch of each epoch is one row (variance 0)."""
    loss = "sparse_categorical_crossentropy"
    rng = np.random.default_rng(21)
    m, spec = build(FIT_SPEC, loss, optimizer=OPTS[opt][0](), dtype=dtype, seed=5)
    twin, _ = build(FIT_SPEC, loss, optimizer=OPTS[opt][0](), dtype=dtype, seed=5)
    w0 = random_weights(spec, rng, dtype)
    m.set_weights(w0)
    twin.set_weights(w0)
    x, y = features(rng, 13, dtype), rng.integers(0, K, 13)
    after_step = []
    record = fm.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: after_step.append(m.get_weights()))
    hist = m.fit(x, y, batch_size=4, epochs=2, shuffle=shuffle, verbose=0, callbacks=[record])
    orders = [np.asarray(fm._core.shuffled_indices(13, fm._core.derive_seed(5, 1 + e))) if shuffle else None
              for e in range(2)]
    want = []
    want_w, want_losses = ref.fit(spec, w0, x, y, loss, OPTS[opt][1](), 4, orders, on_step=want.append)
    assert len(after_step) == len(want) == 8 and m._engine.step == 8
    for i, (got, exp) in enumerate(zip(after_step, want)):
        assert_all_close(got, exp, TOL[dtype], f"step {i + 1}")
    np.testing.assert_allclose(hist.history["loss"], want_losses, rtol=TOL[dtype])
    # batch hooks do not change the result: a fit without them is bit-identical
    assert twin.fit(x, y, batch_size=4, epochs=2, shuffle=shuffle, verbose=0).history == hist.history
    assert all(np.array_equal(a, b) for a, b in zip(twin.get_weights(), m.get_weights()))
    assert moved(want_w, w0) > 1e-3


# ------------------------------------------------------------------ reproducibility

def seeded_model(seed, optimizer="adam", dtype="float64"):
    return build(FIT_SPEC, "sparse_categorical_crossentropy", optimizer=optimizer, dtype=dtype, seed=seed)[0]


def same(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))


def test_seeded_fit_is_bit_reproducible():
    rng = np.random.default_rng(22)
    x, y = features(rng, 50), rng.integers(0, K, 50)
    runs = [seeded_model(s) for s in (3, 3, 4)]
    hists = [m.fit(x, y, batch_size=8, epochs=3, verbose=0).history for m in runs]
    assert hists[0] == hists[1] and same(runs[0], runs[1])
    assert hists[0] != hists[2] and not same(runs[0], runs[2])
    # the same initial weights but another model seed: other shuffles and dropout masks
    a, b = seeded_model(3), seeded_model(4)
    b.set_weights(a.get_weights())
    a.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    b.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert not same(a, b)


def test_save_load_mid_training_resumes_bit_for_bit(tmp_path):
    rng = np.random.default_rng(23)
    x, y = features(rng, 40), rng.integers(0, K, 40)
    m = seeded_model(8)
    m.fit(x, y, batch_size=7, epochs=2, verbose=0)
    m.save(tmp_path / "mid.fastmlp")
    loaded = fm.load_model(tmp_path / "mid.fastmlp")
    assert same(m, loaded) and loaded._engine.step == m._engine.step == 12
    assert [a.get_config() for a in loaded.layers] == [a.get_config() for a in m.layers]
    np.testing.assert_array_equal(loaded.predict(x), m.predict(x))
    h1 = m.fit(x, y, batch_size=7, epochs=2, verbose=0).history
    h2 = loaded.fit(x, y, batch_size=7, epochs=2, verbose=0).history
    assert h1 == h2 and same(m, loaded)
    assert m.train_on_batch(x[:9], y[:9]) == loaded.train_on_batch(x[:9], y[:9]) and same(m, loaded)


# ------------------------------------------------------------------ the rest of the API

SUMMARY_SPEC = [BN(), D(6), BN(0.9, 1e-3, center=False), A("relu"), DO(0.5),
                LN(scale=False), D(K, "softmax")]


def test_summary_count_params_and_weights_in_keras_order():
    m, spec = build(SUMMARY_SPEC, "sparse_categorical_crossentropy", seed=1)
    shapes = ref.weight_shapes(spec, N_IN)
    total = sum(int(np.prod(s)) for s in shapes)
    frozen = sum(int(np.prod(s)) for s, f in zip(shapes, ref.trainable(spec)) if not f)
    assert m.count_params() == total == 4 * N_IN + (N_IN * 6 + 6) + 3 * 6 + 6 + (6 * K + K)
    lines = []
    m.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert f"Total params: {total:,}" in text and f"Trainable params: {total - frozen:,}" in text
    assert f"Non-trainable params: {frozen:,}" in text and frozen == 2 * N_IN + 2 * 6
    for name in ("BatchNormalization", "LayerNormalization", "Dropout", "Activation, relu", "Dense, softmax"):
        assert name in text
    # names and initial values in Keras order: gamma 1, beta 0, moving mean 0, moving variance 1
    assert [n for layer in m.layers for n in layer.weight_names()] == [n for e in spec for n in ref.weight_names(e)]
    init = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}
    names = [n for e in spec for n in ref.weight_names(e)]
    got = m.get_weights()
    assert [w.shape for w in got] == shapes
    for n, w in zip(names, got):
        if n in init:
            assert (w == init[n]).all(), n
    # round trip, and recompiling (another dtype) keeps them all, moving statistics included
    new = random_weights(spec, np.random.default_rng(24))
    m.set_weights(new)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), new))
    m.compile("sgd", "sparse_categorical_crossentropy", device="cpu", dtype="float32")
    assert all(np.array_equal(a, b.astype(np.float32)) for a, b in zip(m.get_weights(), new))


def test_non_finite_train_on_batch_is_undone_with_the_moving_statistics():
    spec = [D(6, "tanh"), BN(0.5), DO(0.3), D(K), BN(0.7)]
    rng = np.random.default_rng(25)
    m, spec = build(spec, "mse", optimizer=OPTS["sgd"][0](), seed=2)
    w0 = random_weights(spec, rng)
    m.set_weights(w0)
    x, y_first, y = features(rng, 6), rng.normal(size=(6, K)), rng.normal(size=(6, K))
    m.train_on_batch(x, y_first)
    before = m.get_weights()
    with pytest.raises(fm.NonFiniteLossError):
        m.train_on_batch(features(rng, 6) * 3, np.full((6, K), 1e200))  # (a - y)^2 overflows
    assert m._engine.step == 1
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), before))
    # training goes on exactly as if the failed step never happened (optimizer state, step, masks)
    m.train_on_batch(x, y)
    want, _ = ref.train_steps(spec, w0, [(x, y_first), (x, y)], "mse", OPTS["sgd"][1]())
    assert_all_close(m.get_weights(), want, 1e-10, "after the undone step")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_streamed_and_resident_data_train_bit_identically(dtype):
    """A small data_budget streams the data from host memory in chunks; model.upload keeps it
    resident for reuse. Both must equal plain arrays bit for bit: the Dropout masks are keyed by
    the step and the element of the batch, the BatchNormalization statistics by the batch."""
    rng = np.random.default_rng(26)
    x, y = features(rng, 45, dtype), rng.integers(0, K, 45)
    row_bytes = np.dtype(dtype).itemsize * (N_IN + 1)
    plain, streamed, resident = (seeded_model(6, dtype=dtype) for _ in range(3))
    streamed.data_budget = 10 * row_bytes
    data = streamed.upload(x, y)
    assert data.streamed and not resident.upload(x, y).streamed
    fit = dict(batch_size=4, epochs=2, verbose=0, validation_data=(x[:10], y[:10]))
    fits = [plain.fit(x, y, **fit).history, streamed.fit(data, **fit).history,
            resident.fit(resident.upload(x, y), **fit).history]
    assert fits[0] == fits[1] == fits[2]
    # validation runs in inference mode: the last val_loss is what evaluate says afterwards
    assert fits[0]["val_loss"][-1] == plain.evaluate(x[:10], y[:10])["loss"]
    assert same(plain, streamed) and same(plain, resident)
    for m in (streamed, resident):
        assert m.evaluate(x, y) == plain.evaluate(x, y)
        np.testing.assert_array_equal(m.predict(x), plain.predict(x))
        for a, b in zip(m.compute_gradients(x, y), plain.compute_gradients(x, y)):
            np.testing.assert_array_equal(a, b)


def test_early_stopping_restores_the_best_weights_with_the_moving_statistics():
    rng = np.random.default_rng(27)
    x, y = features(rng, 40), rng.integers(0, K, 40)
    m = seeded_model(9, optimizer=fm.optimizers.SGD(lr=0.1))
    per_epoch = []
    keep = fm.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: per_epoch.append(m.get_weights()))
    # mode="max" on a falling loss: the first epoch is the best, so the restore is visible
    stop = fm.callbacks.EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True)
    hist = m.fit(x, y, batch_size=8, epochs=10, verbose=0, callbacks=[keep, stop])
    assert len(hist.history["loss"]) == 3 and stop.best_epoch == 0
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), per_epoch[0]))
    flags = [f for e in FIT_SPEC for f in ref.trainable([e])]
    assert not all(flags)
    frozen_moved = [np.abs(a - b).max() for a, b, f in zip(per_epoch[0], per_epoch[-1], flags) if not f]
    assert min(frozen_moved) > 1e-4  # the moving statistics of the best epoch came back too
    fresh = seeded_model(1)
    fresh.set_weights(per_epoch[0])
    np.testing.assert_array_equal(m.predict(x), fresh.predict(x))
