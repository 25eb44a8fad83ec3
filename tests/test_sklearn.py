"""fastmlp.sklearn: scikit-learn's estimator checks, labels, partial_fit, stopping, Pipeline/GridSearchCV."""
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastmlp as fm  # noqa: E402
from fastmlp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(300, 5))
Y3 = np.digitize(X[:, 0] + 0.5 * X[:, 1], [-0.5, 0.5])  # 3 classes
YR = X[:, 0] * 2 - X[:, 2] + 0.1 * RNG.normal(size=300)

# Every scikit-learn check runs and passes; none is listed as an expected failure. scikit-learn
# itself skips check_array_api_input (the estimators do not declare array-API support).
EXPECTED_FAILED_CHECKS: dict = {}


@parametrize_with_checks([MLPClassifier(max_iter=100, random_state=0, device="cpu"),
                          MLPRegressor(max_iter=100, random_state=0, device="cpu")],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_fm_exposes_estimators_lazily():
    assert fm.MLPClassifier is MLPClassifier and fm.MLPRegressor is MLPRegressor


def test_string_labels_proba_and_attributes():
    labels = np.array(["cat", "dog", "emu"])[Y3]
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=60, learning_rate_init=1e-2, random_state=0,
                        device="cpu").fit(X, labels)
    assert list(clf.classes_) == ["cat", "dog", "emu"] and clf.n_features_in_ == 5
    p = clf.predict_proba(X)
    assert p.shape == (300, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert set(clf.predict(X)) <= {"cat", "dog", "emu"} and clf.score(X, labels) > 0.85
    assert len(clf.loss_curve_) == clf.n_iter_ and clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert [c.shape for c in clf.coefs_] == [(5, 16), (16, 3)] and clf.out_activation_ == "softmax"


def test_binary_uses_one_logistic_output():
    y = np.where(X[:, 0] > 0, 5, -3)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, learning_rate_init=1e-2, random_state=1,
                        device="cpu").fit(X, y)
    assert clf.n_outputs_ == 1 and clf.out_activation_ == "logistic"
    assert clf.predict_proba(X).shape == (300, 2) and clf.score(X, y) > 0.9


def test_same_random_state_same_model_and_pickle_round_trip():
    a = MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=3, device="cpu").fit(X, YR)
    b = clone(a).fit(X, YR)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(a.predict(X), c.predict(X))
    assert c.loss_curve_ == a.loss_curve_


def test_regressor_multi_output_and_r2():
    y2 = np.c_[YR, -YR]
    reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=150, learning_rate_init=1e-2, random_state=0,
                       device="cpu").fit(X, y2)
    assert reg.predict(X).shape == (300, 2) and reg.score(X, y2) > 0.8


def test_alpha_maps_to_l2_penalty():
    clf = MLPClassifier(alpha=0.4, batch_size=20, max_iter=1, device="cpu", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, Y3)
    assert all(layer.kernel_regularizer.l2 == pytest.approx(0.4 / 40) for layer in clf.model_.layers)
    reg = MLPRegressor(alpha=0.4, batch_size=20, max_iter=1, device="cpu", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, YR)
    assert reg.model_.layers[0].kernel_regularizer.l2 == pytest.approx(0.4 / 20)


def test_stopping_rules_and_convergence_warning():
    with pytest.warns(ConvergenceWarning, match="maximum iterations"):
        MLPClassifier(max_iter=3, device="cpu", random_state=0).fit(X, Y3)
    clf = MLPClassifier(max_iter=500, tol=10.0, n_iter_no_change=2, device="cpu", random_state=0).fit(X, Y3)
    assert clf.n_iter_ == 4  # no epoch improves by tol: stops once the count exceeds n_iter_no_change
    es = MLPClassifier(max_iter=300, early_stopping=True, n_iter_no_change=3, learning_rate_init=1e-2,
                       device="cpu", random_state=0).fit(X, Y3)
    assert es.n_iter_ < 300 and len(es.validation_scores_) == es.n_iter_ and es.best_loss_ is None
    assert es.best_validation_score_ == max(es.validation_scores_)
    reg = MLPRegressor(max_iter=300, early_stopping=True, learning_rate_init=1e-2, device="cpu",
                       random_state=0).fit(X, YR)
    assert reg.best_validation_score_ > 0.5  # R^2 on the held-out 10%


def test_partial_fit():
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=1e-2, random_state=0, device="cpu")
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X[:50], Y3[:50])
    for i in range(0, 300, 50):
        clf.partial_fit(X[i:i + 50], Y3[i:i + 50], classes=[0, 1, 2])
    # scikit-learn's counters: n_iter_ counts the epochs of the last call, t_ every sample seen
    assert clf.n_iter_ == 1 and clf.t_ == 300 and len(clf.loss_curve_) == 6 and list(clf.classes_) == [0, 1, 2]
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X[:5], np.array([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:5, :3], Y3[:5])
    reg = MLPRegressor(random_state=0, device="cpu").partial_fit(X, YR).partial_fit(X, YR)
    assert reg.n_iter_ == 1 and len(reg.loss_curve_) == 2 and reg.predict(X[:3]).shape == (3,)


@pytest.mark.parametrize("params, word", [
    (dict(max_fun=0), "max_fun"), (dict(solver="newton"), "solver"), (dict(activation="mish"), "activation"),
    (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes"), (dict(alpha=-1.0), "alpha"),
    (dict(batch_size=0), "batch_size"), (dict(learning_rate_init=0.0), "learning_rate_init"),
    (dict(max_iter=0), "max_iter"), (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(device="tpu"), "device"),
])
def test_bad_parameters_fail_in_fit_with_named_errors(params, word):
    clf = MLPClassifier(**params)  # scikit-learn convention: __init__ never validates
    with pytest.raises(ValueError, match=word):
        clf.fit(X, Y3)


def test_failure_paths():
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    with pytest.raises(ValueError, match="one class"):
        MLPClassifier(device="cpu").fit(X, np.zeros(300))
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier(device="cpu").fit(X, YR)
    with pytest.raises(ValueError, match="NaN"):
        MLPRegressor(device="cpu").fit(np.where(X > 2, np.nan, X), YR)
    with pytest.warns(UserWarning, match="clipped"):
        MLPRegressor(batch_size=1000, max_iter=2, device="cpu").fit(X, YR)


def test_pipeline_and_grid_search():
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, learning_rate_init=1e-2, random_state=0,
                                                         device="cpu"))
    gs = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(4,), (16,)],
                             "mlpclassifier__alpha": [1e-4, 1e-1]}, cv=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gs.fit(X, Y3)
    assert set(gs.best_params_) == {"mlpclassifier__hidden_layer_sizes", "mlpclassifier__alpha"}
    assert gs.best_score_ > 0.7 and gs.predict(X[:4]).shape == (4,)
    rs = RandomizedSearchCV(MLPRegressor(max_iter=30, random_state=0, device="cpu"),
                            {"learning_rate_init": [1e-3, 1e-2], "solver": ["adam", "sgd", "rmsprop"]},
                            n_iter=3, cv=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        rs.fit(X, YR)
    assert len(rs.cv_results_["params"]) == 3 and np.isfinite(rs.best_score_)


# ------------------------------------------------------------------ solver="lbfgs"

@pytest.mark.parametrize("load", ["load_digits", "load_breast_cancer"])
def test_lbfgs_solver_matches_scikit_learns_fit(load):
    from sklearn import datasets
    from sklearn.neural_network import MLPClassifier

    x, y = getattr(datasets, load)(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    ours = fm.MLPClassifier(hidden_layer_sizes=(30,), solver="lbfgs", random_state=0).fit(x, y)
    theirs = MLPClassifier(hidden_layer_sizes=(30,), solver="lbfgs", random_state=0).fit(x, y)
    assert ours.score(x, y) >= theirs.score(x, y) - 0.01
    assert ours.loss_ < 0.05 and ours.loss_curve_ is None
    assert 1 <= ours.n_iter_ <= 200
    assert not hasattr(ours, "partial_fit")  # scikit-learn hides it for lbfgs too
    with pytest.raises(AttributeError, match="partial_fit") as info:
        ours.partial_fit(x, y)
    assert "not stochastic" in str(info.value.__cause__)  # scikit-learn's wording, chained as there


def test_lbfgs_solver_warns_at_max_iter_and_honours_max_fun():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 6)), rng.normal(size=200)
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        r = fm.MLPRegressor(hidden_layer_sizes=(20,), solver="lbfgs", max_iter=5, random_state=0).fit(x, y)
    assert r.n_iter_ == 5
    with pytest.warns(ConvergenceWarning, match="max_fun=3"):
        fm.MLPRegressor(hidden_layer_sizes=(20,), solver="lbfgs", max_fun=3, random_state=0).fit(x, y)


def test_lbfgs_solver_refuses_dropout():
    x, y = np.random.default_rng(1).normal(size=(40, 3)), np.arange(40) % 2
    with pytest.raises(ValueError, match="Dropout"):
        fm.MLPClassifier(solver="lbfgs", dropout=0.2).fit(x, y)


def test_scikit_learn_contracts_of_partial_fit_validation_and_no_change():
    x, y = np.random.default_rng(3).normal(size=(60, 4)), np.arange(60) % 3
    clf = fm.MLPClassifier(hidden_layer_sizes=(8,), early_stopping=True, max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        clf.partial_fit(x, y)
    with pytest.raises(ValueError, match="The validation set is too small"):
        fm.MLPRegressor(early_stopping=True).fit(x[:2], y[:2].astype(float))
    inf = fm.MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", tol=1e9, max_iter=7, n_iter_no_change=np.inf,
                           random_state=0)
    with pytest.warns(ConvergenceWarning):
        inf.fit(x, y)
    assert inf.n_iter_ == 7 and inf._no_improvement_count == 6  # counted every epoch, never stopped
    with pytest.raises(ValueError, match="n_iter_no_change"):
        fm.MLPClassifier(n_iter_no_change=0.5).fit(x, y)


def test_lbfgs_warm_start_takes_the_new_max_iter():
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    m = fm.MLPClassifier(solver="lbfgs", warm_start=True, max_iter=5, random_state=0)
    with pytest.warns(ConvergenceWarning):
        m.fit(x, y)
    assert m.n_iter_ == 5
    m.set_params(max_iter=9)
    with pytest.warns(ConvergenceWarning):
        m.fit(x, y)
    assert m.n_iter_ == 9


def test_verbose_prints_scikit_learns_iteration_lines(capsys):
    x, y = np.random.default_rng(4).normal(size=(30, 3)), np.arange(30) % 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fm.MLPClassifier(hidden_layer_sizes=(4,), solver="sgd", max_iter=2, verbose=True, random_state=0).fit(x, y)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Iteration 2, loss = " in out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", [fm.MLPClassifier, fm.MLPRegressor])
def test_input_dtype_is_kept(cls, dtype):
    # scikit-learn's contract: float32 in -> float32 coefs_ and predictions, float64 -> float64 (the
    # CPU's float64 engine then trains)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 4)).astype(dtype)
    y = np.arange(50) % 3 if cls is fm.MLPClassifier else rng.normal(size=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = cls(hidden_layer_sizes=(5,), max_iter=3, random_state=0, device="cpu").fit(x, y)
    assert all(c.dtype == dtype for c in est.coefs_) and all(b.dtype == dtype for b in est.intercepts_)
    assert est.model_._compile_args["dtype"] == dtype
    out = est.predict_proba(x) if cls is fm.MLPClassifier else est.predict(x)
    assert out.dtype == dtype


def test_initial_weights_are_scikit_learns():
    # With an int random_state the network starts from scikit-learn's very weights (its
    # _init_coef draws, in its order): max_iter=1 of lbfgs changes them, so compare max_fun's
    # first evaluation instead, through the loss of the untrained network.
    from sklearn.neural_network import MLPClassifier as SkMLP

    x, y = X[:60], Y3[:60]
    for act in ("relu", "logistic"):
        ours = MLPClassifier(hidden_layer_sizes=(7,), activation=act, random_state=3, device="cpu", max_iter=1,
                             learning_rate_init=1e-12, solver="sgd", momentum=0.0).fit(x, y)
        theirs = SkMLP(hidden_layer_sizes=(7,), activation=act, random_state=3, max_iter=1,
                       learning_rate_init=1e-12, solver="sgd", momentum=0.0).fit(x, y)
        for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def test_sgd_steps_equal_scikit_learns_for_every_loss_scale():
    # fastmlp's losses are 2x (squared error) or 1/K (multilabel BCE) scikit-learn's; the SGD rate
    # and the penalty are rescaled so one full-batch step moves the weights exactly as scikit-learn's.
    from sklearn.neural_network import MLPClassifier as SkC, MLPRegressor as SkR

    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 4))
    cases = [(MLPRegressor, SkR, rng.normal(size=40)), (MLPRegressor, SkR, rng.normal(size=(40, 3))),
             (MLPClassifier, SkC, rng.integers(0, 2, (40, 3))), (MLPClassifier, SkC, rng.integers(0, 3, 40))]
    for ours_cls, sk_cls, y in cases:
        kw = dict(hidden_layer_sizes=(5,), solver="sgd", momentum=0.0, learning_rate_init=0.3, alpha=1e-2,
                  batch_size=40, max_iter=1, random_state=0, shuffle=False)
        ours, theirs = ours_cls(device="cpu", **kw).fit(x, y), sk_cls(**kw).fit(x, y)
        for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_multilabel_targets_sigmoid_per_label():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(120, 6))
    Y = np.column_stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] < 0.3]).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(16,), solver="lbfgs", random_state=0, device="cpu").fit(x, Y)
    assert clf.n_outputs_ == 3 and clf.out_activation_ == "logistic" and list(clf.classes_) == [0, 1, 2]
    p = clf.predict_proba(x)
    assert p.shape == (120, 3) and not np.allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(x), (p > 0.5).astype(int))
    assert clf.score(x, Y) > 0.9
    with pytest.raises(ValueError, match="multilabel indicator"):
        MLPClassifier(device="cpu").fit(x, np.column_stack([Y[:, 0], Y[:, 1] * 2 + 3]))


def test_sparse_input_gives_the_dense_result():
    sp = pytest.importorskip("scipy.sparse")
    x = np.where(np.abs(X) > 1, X, 0.0)
    kw = dict(hidden_layer_sizes=(8,), max_iter=20, random_state=0, device="cpu")
    dense = MLPClassifier(**kw).fit(x, Y3)
    sparse = MLPClassifier(**kw).fit(sp.csr_matrix(x), Y3)
    for a, b in zip(dense.coefs_, sparse.coefs_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dense.predict_proba(x), sparse.predict_proba(sp.csc_matrix(x)))


def test_learning_rate_schedules_of_sgd():
    x, y = X[:40], Y3[:40]
    inv = MLPClassifier(solver="sgd", learning_rate="invscaling", power_t=0.5, learning_rate_init=0.1, max_iter=3,
                        random_state=0, device="cpu").fit(x, y)
    assert inv._optimizer.learning_rate == pytest.approx(0.1 / (3 * 40 + 1) ** 0.5, rel=1e-15)
    ada = MLPClassifier(solver="sgd", learning_rate="adaptive", tol=10.0, n_iter_no_change=2, max_iter=500,
                        random_state=0, device="cpu").fit(x, y)
    # epoch 1 sets best_loss_; then every 3 epochs without improvement (count > 2) divide the rate
    # by 5 (epochs 4, 7, 10, 13, 16: 0.001 / 5^5 <= 1e-6) and the next such epoch (19) stops
    assert ada._optimizer.learning_rate == pytest.approx(0.001 / 5 ** 5) and ada.n_iter_ == 19
    with pytest.raises(ValueError, match="learning_rate"):
        MLPClassifier(learning_rate="cosine", device="cpu").fit(x, y)


def test_poisson_regression_matches_the_glm():
    from sklearn.linear_model import PoissonRegressor

    rng = np.random.default_rng(9)
    x = rng.uniform(0, 1, (200, 2))
    y = rng.poisson(np.exp(x @ [1.0, -0.5] + 0.3))
    glm = PoissonRegressor(alpha=0, tol=1e-8).fit(x, y)
    mlp = MLPRegressor(loss="poisson", hidden_layer_sizes=(1,), activation="identity", alpha=0, solver="lbfgs",
                       tol=1e-8, random_state=0, device="cpu").fit(x, y)
    assert mlp.out_activation_ == "exp"
    np.testing.assert_allclose(mlp.predict(x), glm.predict(x), rtol=1e-4)
    with pytest.raises(ValueError, match="non-negative"):
        MLPRegressor(loss="poisson", device="cpu").fit(x, -y)


def test_sample_weight_equals_repeated_rows_for_lbfgs():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    w = rng.integers(1, 4, 30)
    kw = dict(hidden_layer_sizes=(4,), solver="lbfgs", random_state=0, device="cpu", tol=1e-10, max_iter=500)
    a = MLPClassifier(**kw).fit(x, y, sample_weight=w)
    b = MLPClassifier(**kw).fit(np.repeat(x, w, 0), np.repeat(y, w))
    np.testing.assert_allclose(a.predict_proba(x), b.predict_proba(x), atol=1e-4)
    with pytest.raises(ValueError, match="non-zero"):  # scikit-learn's own check
        MLPClassifier(**kw).fit(x, y, sample_weight=np.zeros(30))


def test_diverging_runs_end_like_scikit_learns_and_failed_calls_change_nothing():
    x = np.finfo(np.float64).max * np.random.default_rng(11).uniform(size=(10, 2))
    y = np.random.default_rng(11).normal(size=10)
    reg = MLPRegressor(device="cpu")
    with pytest.raises(ValueError, match="non-finite parameter weights"):
        reg.fit(x, y)
    assert not hasattr(reg, "coefs_") and not hasattr(reg, "model_")
    # a partial_fit that diverges leaves the fitted estimator (and its network) as it was
    good = MLPRegressor(solver="sgd", random_state=0, device="cpu").partial_fit(X, YR)
    before = (good.n_iter_, good.t_, list(good.loss_curve_), [c.copy() for c in good.coefs_],
              good.model_._engine.get_snapshot())
    with pytest.raises(ValueError, match="non-finite"):
        good.partial_fit(x[:, :1].repeat(5, axis=1), y)
    assert (good.n_iter_, good.t_, good.loss_curve_) == before[:3]
    for a, b in zip(good.coefs_, before[3]):
        np.testing.assert_array_equal(a, b)
    after = good.model_._engine.get_snapshot()
    np.testing.assert_array_equal(after[0], before[4][0])
    np.testing.assert_array_equal(after[1], before[4][1])
    assert after[2] == before[4][2]
    # with early stopping: a warning, a NaN score, and the best weights
    es = MLPRegressor(hidden_layer_sizes=(20,), activation="identity", solver="sgd", learning_rate_init=1.0,
                      early_stopping=True, max_iter=20, random_state=0, device="cpu")
    with pytest.warns(ConvergenceWarning, match="NaN or Inf"):
        es.fit(X * 100, YR * 100)
    assert np.isnan(es.validation_scores_[-1]) and all(np.isfinite(c).all() for c in es.coefs_)


def test_assigned_coefs_are_trained_on_and_predicted_with():
    # scikit-learn's estimators read coefs_ / intercepts_ as they are: a user may assign them
    # before partial_fit (or a warm-start fit) and after fitting; fastmlp's network follows.
    x, y = X[:30, :3], (X[:30, 0] > 0).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(2,), solver="sgd", activation="logistic", momentum=0.0, alpha=0.0,
                        learning_rate_init=0.1, batch_size=30, device="cpu")
    w1, b1 = np.array([[0.1, 0.2], [0.3, 0.1], [0.5, 0.0]]), np.array([0.1, 0.1])
    w2, b2 = np.array([[0.1], [0.2]]), np.array([1.0])
    clf.coefs_, clf.intercepts_ = [w1, w2], [b1, b2]
    clf.partial_fit(x, y, classes=[0, 1])
    # one full-batch step from exactly those weights: the float64 gradient by hand
    h = 1 / (1 + np.exp(-(x @ w1 + b1)))
    p = 1 / (1 + np.exp(-(h @ w2 + b2)))
    d2 = (p - y[:, None]) / len(x)
    d1 = (d2 @ w2.T) * h * (1 - h)
    np.testing.assert_allclose(clf.coefs_[1], w2 - 0.1 * h.T @ d2, rtol=1e-12)
    np.testing.assert_allclose(clf.coefs_[0], w1 - 0.1 * x.T @ d1, rtol=1e-12)
    np.testing.assert_allclose(clf.intercepts_[0], b1 - 0.1 * d1.sum(0), rtol=1e-12)
    # assigning new weights to a fitted estimator changes its predictions
    clf.coefs_ = [np.zeros((3, 2)), np.zeros((2, 1))]
    clf.intercepts_ = [np.zeros(2), np.array([2.0])]
    np.testing.assert_allclose(clf.predict_proba(x)[:, 1], 1 / (1 + np.exp(-2.0)), rtol=1e-12)
    clf.coefs_ = [np.zeros((4, 2)), np.zeros((2, 1))]
    with pytest.raises(ValueError, match="shapes"):
        clf.predict(x)


@pytest.mark.parametrize("early", [False, True])
def test_every_documented_attribute_exists_with_scikit_learns_meaning(early):
    clf = MLPClassifier(hidden_layer_sizes=(6, 5), max_iter=15, early_stopping=early, random_state=0,
                        device="cpu").fit(X, Y3)
    assert [c.shape for c in clf.coefs_] == [(5, 6), (6, 5), (5, 3)] and [b.shape for b in clf.intercepts_] == \
        [(6,), (5,), (3,)]
    assert clf.n_layers_ == 4 and clf.n_outputs_ == 3 and clf.out_activation_ == "softmax"
    assert list(clf.classes_) == [0, 1, 2] and clf.n_features_in_ == 5
    assert clf.n_iter_ == len(clf.loss_curve_) and clf.t_ == clf.n_iter_ * (270 if early else 300)
    assert clf.loss_ == clf.loss_curve_[-1]
    if early:
        assert clf.best_loss_ is None and clf.best_validation_score_ == max(clf.validation_scores_)
    else:
        assert clf.best_loss_ == min(clf.loss_curve_) and clf.validation_scores_ is None
        assert clf.best_validation_score_ is None


def test_a_failed_warm_fit_leaves_the_fitted_estimator_whole():
    # The checkpoint is taken before fit touches anything (classes, n_features_in_, model_).
    reg = MLPRegressor(hidden_layer_sizes=(5,), max_iter=5, random_state=0, device="cpu").fit(X, YR)
    before = (reg.predict(X[:4]).copy(), reg.n_features_in_, [c.copy() for c in reg.coefs_])
    reg.set_params(solver="sgd", learning_rate_init=1e6)
    with pytest.raises(ValueError, match="non-finite"):
        reg.fit(X * 1e150, YR * 1e150)
    np.testing.assert_array_equal(reg.predict(X[:4]), before[0])
    assert reg.n_features_in_ == before[1] and all(np.array_equal(a, b) for a, b in zip(reg.coefs_, before[2]))
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0, device="cpu").fit(X, Y3)
    classes, proba = clf.classes_.copy(), clf.predict_proba(X[:3])
    clf.set_params(solver="sgd", learning_rate_init=1e6)
    with pytest.raises(ValueError, match="non-finite"):  # another width and other classes, then a failure
        clf.fit(X[:, :2] * 1e150, np.arange(300) % 5)
    np.testing.assert_array_equal(clf.classes_, classes)
    np.testing.assert_array_equal(clf.predict_proba(X[:3]), proba)


def test_later_calls_with_other_weights_or_batches_step_as_scikit_learn():
    # scikit-learn divides each batch's loss and penalty by its total weight; fastmlp rescales the
    # weights to mean 1 and resets the L2 coefficient for the call (keeping the optimizer state),
    # so a partial_fit with weights 10, then one of 20 rows, step exactly as its own.
    from sklearn.neural_network import MLPRegressor as SkR

    x, y = X[:40], YR[:40]
    kw = dict(hidden_layer_sizes=(3,), solver="sgd", momentum=0.9, alpha=1.0, batch_size=40,
              learning_rate_init=1e-2, random_state=0)
    ours, theirs = MLPRegressor(device="cpu", **kw), SkR(**kw)
    for est in (ours, theirs):  # full batches: scikit-learn's per-batch and fastmlp's per-call means agree
        est.partial_fit(x, y)
        est.partial_fit(x, y, sample_weight=np.full(40, 10.0))
        est.partial_fit(x[:20], y[:20], sample_weight=np.linspace(1, 3, 20))  # 20 rows: another batch
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
