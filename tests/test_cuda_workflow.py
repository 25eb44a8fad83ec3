"""The workflow features on the CUDA backend: batch callbacks between captured steps, resident
datasets shared by models and search trials, save/load across devices, scikit-learn estimators.

Runs on a machine with an NVIDIA GPU and skips elsewhere (CI has none)."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import callbacks as C
from fastmlp.model_selection import grid_search

pytestmark = pytest.mark.skipif(not fm.cuda_is_available(),
                                reason="no usable CUDA GPU: " + fm.build_info()["cuda_reason"][:200])

RNG = np.random.default_rng(11)
X = RNG.normal(size=(250, 6)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)
XV, YV = X[:50], Y[:50]


def make(device="cuda", units=16, lr=1e-2, seed=0):
    m = fm.Sequential([fm.Dense(units, "relu", input_dim=6), fm.Dense(3, "softmax")], seed=seed)
    m.compile(fm.optimizers.Adam(lr=lr), "sparse_categorical_crossentropy", metrics=["accuracy"], device=device)
    return m


def same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("interval", [1, 4, 7])
def test_batch_hooks_between_captured_steps_are_bit_identical(interval):
    # 250 rows in batches of 16: 15 full steps (one captured graph) and a last one of 10 (another).
    ends = []
    plain, hooked = make(), make()
    h0 = plain.fit(X, Y, batch_size=16, epochs=3, verbose=0)
    cb = C.LambdaCallback(on_train_batch_end=lambda b, logs: ends.append(b), batch_interval=interval)
    h1 = hooked.fit(X, Y, batch_size=16, epochs=3, verbose=0, callbacks=[cb])
    assert h1.history == h0.history and same_weights(plain, hooked)
    per_epoch = [min(k + interval, 16) - 1 for k in range(0, 16, interval)]
    assert ends == per_epoch * 3


def test_resident_data_is_shared_by_cuda_models_and_refused_by_others():
    owner = make()
    train, val = owner.upload(X, Y), owner.upload(XV, YV)
    assert train.device.startswith("cuda")
    a, b = make(units=32), make(units=32)
    ha = a.fit(train, validation_data=val, epochs=2, batch_size=32, verbose=0)
    hb = b.fit(X, Y, validation_data=(XV, YV), epochs=2, batch_size=32, verbose=0)
    assert ha.history == hb.history and same_weights(a, b)
    with pytest.raises(ValueError, match="lives on cuda"):
        make("cpu").fit(train, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="lives on cpu"):
        make().fit(make("cpu").upload(X, Y), epochs=1, verbose=0)


def test_grid_search_on_the_gpu_uploads_once(monkeypatch):
    from fastmlp.models import Sequential

    uploads = []
    real = Sequential._upload_arrays
    monkeypatch.setattr(Sequential, "_upload_arrays",
                        lambda self, x, y, xn, yn, **kw: uploads.append(self.device) or real(self, x, y, xn, yn, **kw))
    res = grid_search(lambda units, lr: make(units=units, lr=lr), X, Y, (XV, YV),
                      {"units": [8, 32], "lr": [1e-3, 1e-2]}, epochs=2)
    assert len(uploads) == 2 and all(d.startswith("cuda") for d in uploads)
    for row in res:
        m = make(**row["params"])
        m.fit(X, Y, validation_data=(XV, YV), epochs=2, batch_size=32, verbose=0)
        assert row["score"] == m.evaluate(XV, YV)["loss"]


def test_save_load_resume_on_the_gpu_and_across_devices(tmp_path):
    straight = make()
    straight.fit(X, Y, epochs=4, batch_size=32, verbose=0)
    first = make()
    first.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    first.save(tmp_path / "half.fm")
    resumed = fm.load_model(tmp_path / "half.fm")
    assert resumed.device.startswith("cuda")
    resumed.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    assert same_weights(straight, resumed) and resumed._engine.step == straight._engine.step
    on_cpu = fm.load_model(tmp_path / "half.fm", device="cpu")
    assert on_cpu.device == "cpu" and same_weights(on_cpu, first)
    np.testing.assert_allclose(on_cpu.predict(XV), first.predict(XV), rtol=1e-5, atol=1e-6)


def test_estimators_on_the_gpu_agree_with_the_cpu():
    scores = {}
    for device in ("cpu", "cuda"):
        clf = fm.MLPClassifier(hidden_layer_sizes=(16,), max_iter=20, random_state=0, device=device)
        clf.fit(X, Y)
        proba = clf.predict_proba(XV)
        assert proba.shape == (50, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
        clf.partial_fit(X[:64], Y[:64])
        scores[device] = (clf.score(XV, YV), proba)
    assert abs(scores["cpu"][0] - scores["cuda"][0]) <= 0.04
    np.testing.assert_allclose(scores["cuda"][1], scores["cpu"][1], atol=1e-3)
    reg = fm.MLPRegressor(hidden_layer_sizes=(16,), max_iter=100, learning_rate_init=1e-2, random_state=0,
                          device="cuda")
    reg.fit(X, X[:, 0] * 2)
    assert reg.score(X, X[:, 0] * 2) > 0.9  # 0.996 on the CPU backend


def test_streamed_training_on_the_gpu_equals_resident():
    # A budget of 40 rows forces the chunked path (page-locked staging, copies between captured steps).
    resident, streamed = make(), make()
    streamed.data_budget = 40 * 4 * 7
    hr = resident.fit(X, Y, batch_size=16, epochs=3, verbose=0, validation_data=(XV, YV))
    data = streamed.upload(X, Y)
    assert data.streamed and data.device.startswith("cuda")
    hs = streamed.fit(data, batch_size=16, epochs=3, verbose=0, validation_data=(XV, YV))
    assert hs.history == hr.history and same_weights(resident, streamed)
    np.testing.assert_array_equal(streamed.predict(data), resident.predict(X))


def test_uploaded_gpu_arrays_are_copied_so_the_source_may_go():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no GPU")
    xs, ys = torch.from_numpy(X).cuda(), torch.from_numpy(Y).cuda()
    m = make()
    data = m.upload(xs, ys)
    xs.fill_(float("nan"))  # neither changing nor freeing the source reaches the dataset
    del xs, ys
    torch.cuda.empty_cache()
    junk = torch.full((1 << 22,), float("nan"), device="cuda")  # reuse the freed memory
    reference = make()
    assert m.fit(data, epochs=2, verbose=0).history == reference.fit(X, Y, epochs=2, verbose=0).history
    del junk


def test_dlpack_only_gpu_arrays_are_used_in_place():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no GPU")

    class DLPackOnly:  # hides __cuda_array_interface__: as JAX arrays present themselves
        def __init__(self, t):
            self.t = t

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

        def __dlpack__(self, stream=None):
            return self.t.__dlpack__(stream=stream)

    xs, ys = DLPackOnly(torch.from_numpy(X).cuda()), DLPackOnly(torch.from_numpy(Y).cuda())
    a, b = make(), make()
    ha = a.fit(xs, ys, epochs=2, batch_size=32, verbose=0, validation_data=(xs, ys))
    hb = b.fit(X, Y, epochs=2, batch_size=32, verbose=0, validation_data=(X, Y))
    assert ha.history == hb.history and same_weights(a, b)
    np.testing.assert_array_equal(a.predict(xs), b.predict(X))
