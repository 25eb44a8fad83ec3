"""fastmlp.model_selection: grid_search / random_search over Sequential hyper-parameters."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import callbacks as C
from fastmlp.model_selection import IntUniform, LogUniform, SearchResult, grid_search, random_search

RNG = np.random.default_rng(0)
X = RNG.normal(size=(300, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
XT, YT, XV, YV = X[:240], Y[:240], X[240:], Y[240:]


def build(units=8, lr=1e-2, seed=0):
    m = fm.Sequential([fm.Dense(units, "relu", input_dim=4), fm.Dense(2, "softmax")], seed=seed)
    m.compile(fm.optimizers.Adam(lr=lr), "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
    return m


def test_grid_search_ranks_all_combinations():
    res = grid_search(build, XT, YT, (XV, YV), {"units": [4, 16], "lr": [1e-4, 3e-2], "batch_size": [32]},
                      epochs=4, scoring="val_accuracy", keep_best=True)
    assert isinstance(res, SearchResult) and len(res) == 4
    scores = [r["score"] for r in res]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in res] == [1, 2, 3, 4]
    assert {tuple(sorted(r["params"].items())) for r in res} == {
        (("batch_size", 32), ("lr", lr), ("units", u)) for u in (4, 16) for lr in (1e-4, 3e-2)}
    assert res.best_params["lr"] == 3e-2  # a 300x larger rate wins after 4 epochs
    assert res.best_model.evaluate(XV, YV)["accuracy"] == pytest.approx(res.best_score)
    assert all(r["epochs"] == 4 and len(r["history"]["loss"]) == 4 for r in res)
    table = res.table()
    assert table.splitlines()[0].split() == ["rank", "val_accuracy", "units", "lr", "batch_size", "epochs",
                                            "seconds"]
    assert len(table.splitlines()) == 6 and str(res) == table


def test_loss_scoring_is_minimized_and_callable_scoring_maximized():
    res = grid_search(build, XT, YT, (XV, YV), {"lr": [1e-4, 3e-2]}, epochs=3)
    assert res.scoring == "val_loss" and res.mode == "min" and res[0]["score"] <= res[1]["score"]
    res = grid_search(build, XT, YT, (XV, YV), {"lr": [1e-4, 3e-2]}, epochs=3,
                      scoring=lambda m, x, y: -m.evaluate(x, y)["loss"])
    assert res.mode == "max" and res.best_params == {"lr": 3e-2}


def test_default_builder_classification_and_regression():
    res = grid_search(None, XT, YT, (XV, YV), {"hidden_layer_sizes": [(4,), (8, 8)], "learning_rate": [1e-2]},
                      epochs=2, keep_best=True)
    assert len(res) == 2 and res.best_model.layers[-1].units == 2
    yr = (X[:, 0] * 2).astype(np.float32)
    res = grid_search(None, XT, yr[:240], (XV, yr[240:]), {"l2": [0.0, 1e-3]}, epochs=2, scoring="val_mae")
    assert res.mode == "min" and len(res) == 2 and "val_mae" in res[0]["logs"]


def test_random_search_is_reproducible_and_samples_distributions():
    dists = {"lr": LogUniform(1e-4, 1e-1), "units": IntUniform(2, 12), "batch_size": [16, 64]}
    a = random_search(build, XT, YT, (XV, YV), dists, n_iter=4, seed=5, epochs=2)
    b = random_search(build, XT, YT, (XV, YV), dists, n_iter=4, seed=5, epochs=2)
    assert [r["params"] for r in a] == [r["params"] for r in b] and len(a) == 4
    for r in a:
        assert 1e-4 <= r["params"]["lr"] < 1e-1 and 2 <= r["params"]["units"] <= 12
        assert r["params"]["batch_size"] in (16, 64)
    # all-list distributions are drawn without repetition, at most the grid size
    c = random_search(build, XT, YT, (XV, YV), {"units": [4, 8], "lr": [1e-2]}, n_iter=10, seed=0, epochs=1)
    assert len(c) == 2 and {r["params"]["units"] for r in c} == {4, 8}


def test_callbacks_are_copied_per_trial():
    es = C.EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)  # stops after epoch 2
    res = grid_search(build, XT, YT, (XV, YV), {"lr": [1e-3, 1e-2]}, epochs=10, callbacks=[es])
    assert [r["epochs"] for r in res] == [2, 2] and es.model is None  # the original is untouched


def test_failed_trials_are_recorded_and_ranked_last():
    def flaky(units=8):
        if units == 0:
            raise ValueError("no units")
        return build(units)

    res = grid_search(flaky, XT, YT, (XV, YV), {"units": [0, 8]}, epochs=1)
    assert res[0]["params"] == {"units": 8} and res[1]["score"] is None and "no units" in res[1]["error"]
    assert "error" in res.table()
    with pytest.raises(ValueError, match="no units"):
        grid_search(flaky, XT, YT, (XV, YV), {"units": [0, 8]}, epochs=1, error="raise")
    with pytest.raises(RuntimeError, match="every trial failed"):
        grid_search(flaky, XT, YT, (XV, YV), {"units": [0]}, epochs=1)


@pytest.mark.parametrize("call, exc, word", [
    (lambda: grid_search(build, XT, YT, (XV, YV), {"lr": [1e-2]}, scoring="val_auc"), ValueError, "val_auc"),
    (lambda: grid_search(build, XT, YT, None, {"lr": [1e-2]}), ValueError, "validation_data"),
    (lambda: grid_search(build, XT, YT, (XV, YV), {}), ValueError, "non-empty"),
    (lambda: grid_search(build, XT, YT, (XV, YV), {"lr": []}), ValueError, "empty"),
    (lambda: grid_search(build, XT, YT, (XV, YV), {"lr": LogUniform(1e-3, 1e-2)}), TypeError, "random_search"),
    (lambda: grid_search(build, XT, YT, (XV[:, :3], YV), {"lr": [1e-2]}), ValueError, "features"),
    (lambda: grid_search(build, XT, YT[:10], (XV, YV), {"lr": [1e-2]}), ValueError, "lengths"),
    (lambda: grid_search(lambda **p: "model", XT, YT, (XV, YV), {"lr": [1e-2]}), ValueError, "Sequential"),
    (lambda: grid_search(build, XT, YT, (XV, YV), {"lr": [1e-2]}, error="ignore"), ValueError, "error"),
    (lambda: random_search(build, XT, YT, (XV, YV), {"lr": [1e-2]}, n_iter=0), ValueError, "n_iter"),
    (lambda: LogUniform(0, 1), ValueError, "LogUniform"),
])
def test_bad_search_arguments(call, exc, word):
    with pytest.raises(exc, match=word):
        call()


def test_data_is_converted_once(monkeypatch):
    import fastmlp._validation as V

    calls = []
    real = V.as_features
    monkeypatch.setattr(V, "as_features", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    x64 = XT.astype(np.float64)  # converted to float32 once, then shared by every trial
    grid_search(build, x64, YT, (XV, YV), {"lr": [1e-3, 1e-2, 1e-1]}, epochs=1)
    assert calls == ["x", "validation x"]


def build_typed(lr=1e-2, dtype="float32"):
    m = fm.Sequential([fm.Dense(8, "relu", input_dim=4), fm.Dense(2, "softmax")], seed=0)
    m.compile(fm.optimizers.Adam(lr=lr), "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu",
              dtype=dtype)
    return m


def test_data_is_uploaded_once_and_stays_resident_across_trials(monkeypatch):
    from fastmlp.models import Sequential

    uploads = []
    real = Sequential._upload_arrays
    monkeypatch.setattr(Sequential, "_upload_arrays", lambda self, x, y, xn, yn, **kw:
                        uploads.append((xn, self._dtype.name)) or real(self, x, y, xn, yn, **kw))
    grid = {"lr": [1e-3, 1e-2, 1e-1], "units": [4, 8]}
    res = grid_search(build, XT, YT, (XV, YV), grid, epochs=2)
    assert len(res) == 6 and uploads == [("x", "float32"), ("x", "float32")]  # train and validation, once
    # A trial of another kind (float64 engine) gets its own upload, shared with its kind.
    uploads.clear()
    grid_search(build_typed, XT, YT, (XV, YV), {"dtype": ["float32", "float64", "float32", "float64"]}, epochs=1)
    assert uploads == [("x", "float32")] * 2 + [("x", "float64")] * 2


def test_resident_search_scores_equal_separate_fits_on_arrays():
    res = grid_search(build, XT, YT, (XV, YV), {"lr": [1e-3, 3e-2], "units": [4, 8]}, epochs=3, batch_size=32)
    for row in res:
        m = build(**row["params"])
        h = m.fit(XT, YT, validation_data=(XV, YV), epochs=3, batch_size=32, verbose=0)
        assert row["score"] == m.evaluate(XV, YV)["loss"]
        assert row["history"] == h.history


def test_trial_whose_model_cannot_use_the_resident_data_fails_like_fit_would():
    def build_outputs(n_out=2):
        m = fm.Sequential([fm.Dense(8, "relu", input_dim=4), fm.Dense(n_out, "softmax")], seed=0)
        m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
        return m

    y3 = YT.copy()
    y3[0] = 2  # three classes in the training labels
    res = grid_search(build_outputs, XT, y3, (XV, YV), {"n_out": [3, 2]}, epochs=1)
    assert res[0]["params"] == {"n_out": 3} and res[0]["score"] is not None
    assert res[1]["score"] is None and "class ids up to 2" in res[1]["error"]


def _parallel_build(units=4, lr=1e-3):
    m = fm.Sequential([fm.Dense(units, "relu", input_dim=XT.shape[1]), fm.Dense(3, "softmax")], seed=1)
    m.compile(fm.optimizers.Adam(lr=lr), "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
    return m


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_parallel_trials_give_the_sequential_results(backend):
    # n_jobs runs the trials through joblib (worker processes or threads); every score equals the
    # sequential run's, and keep_best retrains the winner here to the same model.
    joblib = pytest.importorskip("joblib")
    grid = {"units": [4, 8], "lr": [1e-3, 1e-2]}
    seq = grid_search(_parallel_build, XT, YT, (XV, YV), grid, epochs=2)
    with joblib.parallel_backend(backend):
        par = grid_search(_parallel_build, XT, YT, (XV, YV), grid, epochs=2, n_jobs=2, keep_best=True)
    assert [r["params"] for r in par] == [r["params"] for r in seq]
    assert [r["score"] for r in par] == [r["score"] for r in seq]
    assert par.best_model.evaluate(XV, YV)["loss"] == seq[0]["score"]
    rnd = random_search(_parallel_build, XT, YT, (XV, YV), grid, n_iter=3, seed=4, epochs=1, n_jobs=2)
    assert [r["score"] for r in rnd] == [r["score"] for r in random_search(_parallel_build, XT, YT, (XV, YV), grid,
                                                                         n_iter=3, seed=4, epochs=1)]
    with pytest.raises(ValueError, match="n_jobs"):
        grid_search(_parallel_build, XT, YT, (XV, YV), grid, n_jobs=0)


def test_estimators_in_a_parallel_grid_search_cv():
    model_selection = pytest.importorskip("sklearn.model_selection")
    gs = model_selection.GridSearchCV(fm.MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0,
                                                       device="cpu"),
                                      {"alpha": [1e-4, 1e-2]}, cv=2, n_jobs=2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gs.fit(XT, YT)
    assert set(gs.cv_results_["param_alpha"]) == {1e-4, 1e-2} and 0 <= gs.best_score_ <= 1


def _cluster_build_fn():
    """A build function defined inside a function, so joblib's cluster backends ship it to their
    workers by value (the test module is not importable there)."""
    def build_local(units=4, lr=1e-3):
        m = fm.Sequential([fm.Dense(units, "relu", input_dim=4), fm.Dense(3, "softmax")], seed=1)
        m.compile(fm.optimizers.Adam(lr=lr), "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
        return m
    return build_local


def test_a_search_on_a_dask_cluster_gives_the_sequential_results():
    # Issue 14: trials spread over a dask.distributed cluster through joblib's "dask" backend (two
    # worker processes here) score exactly as the sequential run.
    pytest.importorskip("distributed")
    import joblib
    from distributed import Client, LocalCluster

    build_local = _cluster_build_fn()
    grid = {"units": [4, 8], "lr": [1e-3, 1e-2]}
    seq = grid_search(build_local, XT, YT, (XV, YV), grid, epochs=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with joblib.parallel_backend("dask"):
            par = grid_search(build_local, XT, YT, (XV, YV), grid, epochs=2, n_jobs=2)
        workers = client.run(lambda: __import__("os").getpid())
    assert len(workers) == 2
    assert [r["params"] for r in par] == [r["params"] for r in seq]
    assert [r["score"] for r in par] == [r["score"] for r in seq]


def test_a_search_on_ray_gives_the_sequential_results():
    # Issue 14: the same through Ray's joblib backend on a local Ray instance of two CPUs. Ray is
    # not a test dependency (a large wheel): this runs where it is installed and skips elsewhere.
    ray = pytest.importorskip("ray")
    import os

    import joblib
    from ray.util.joblib import register_ray

    build_local = _cluster_build_fn()
    driver = os.getpid()

    def build_in_a_worker(units=4, lr=1e-3):
        if os.getpid() == driver:
            raise RuntimeError("the trial ran in the driver, not in a Ray worker")
        return build_local(units, lr)

    grid = {"units": [4, 8], "lr": [1e-3, 1e-2]}
    seq = grid_search(build_local, XT, YT, (XV, YV), grid, epochs=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        register_ray()
        with joblib.parallel_backend("ray"):
            par = grid_search(build_in_a_worker, XT, YT, (XV, YV), grid, epochs=2, n_jobs=2, error="raise")
    finally:
        ray.shutdown()
    assert [r["params"] for r in par] == [r["params"] for r in seq]
    assert [r["score"] for r in par] == [r["score"] for r in seq]
