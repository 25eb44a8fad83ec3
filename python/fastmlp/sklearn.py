"""scikit-learn estimators backed by fastmlp: MLPClassifier and MLPRegressor.

They take scikit-learn's MLP parameter names and follow its conventions (fit/predict/
predict_proba/score/partial_fit, get_params/set_params, clone, Pipeline, GridSearchCV), while
training runs in fastmlp's native engine (CPU or CUDA). Importing this module imports
scikit-learn; `import fastmlp` does not (fm.MLPClassifier loads this module on first use).

    from fastmlp import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=50, random_state=0).fit(X, y)
    clf.predict_proba(X[:5])

Network: Dense hidden layers of `hidden_layer_sizes` with `activation` (scikit-learn's
"identity", "logistic", "tanh", "relu", or a fastmlp name such as "leaky_relu", "elu"), each
followed by a Dropout layer when `dropout` > 0; the
classifier's output is one sigmoid unit with binary cross-entropy for 2 classes and a softmax
with (sparse) categorical cross-entropy for more; the regressor's output is linear with the mse
loss (one unit per target column; 2-D y gives multi-output regression).

Parameter mapping, and where it differs from scikit-learn:

alpha (L2 penalty)  scikit-learn adds alpha / (2 * n_batch) * sum(||W||^2) to the mean batch loss.
                    fastmlp's L2(l) adds l * sum(||W||^2), so every layer's kernels (not biases)
                    get fm.regularizers.L2(alpha / (2 * batch_size)) for the classifier, with
                    batch_size the effective batch size. For the regressor fastmlp's mse is
                    mean((y - p)^2) while scikit-learn's squared loss is half that, so the penalty
                    is doubled too, L2(alpha / batch_size): the objective is exactly 2x
                    scikit-learn's and has the same minimizer. (scikit-learn divides the penalty
                    of a short last batch by its own size; fastmlp uses the nominal batch size.)
loss_curve_         fastmlp's training loss per epoch: the mean over the epoch's samples of the
                    loss plus the penalty (for the regressor, mean squared error, not its half).
solver              "sgd" (momentum, nesterovs_momentum), "adam" (beta_1, beta_2, epsilon),
                    "adamw" (as adam, plus fastmlp's default decoupled weight_decay=1e-2),
                    any other fm.optimizers name ("rmsprop", "adagrad", "adadelta", "nadam",
                    "radam", "lamb": their torch defaults except lr = learning_rate_init).
                    "lbfgs": full-batch L-BFGS (fm.optimizers.LBFGS with the strong-Wolfe line
                    search, history 10), at most max_iter iterations and max_fun loss
                    evaluations, stopping when max |gradient| <= tol (scipy's gtol); n_iter_ counts
                    its iterations, loss_ is the final training loss; no loss_curve_, partial_fit,
                    early stopping or dropout (its loss must be deterministic). scikit-learn's learning_rate schedules
                    ("invscaling", "adaptive") are not available (use fastmlp.Sequential with
                    fm.schedules for schedules).
batch_size          "auto" = min(200, n_samples); larger values are clipped with a warning.
stopping            as scikit-learn: without early_stopping, training stops when the training
                    loss has not improved by tol for more than n_iter_no_change consecutive
                    epochs; with early_stopping a stratified (classifier) validation_fraction of
                    the data is held out, the score is its accuracy (classifier) or R^2
                    (regressor), and the best epoch's weights are restored. A ConvergenceWarning
                    is raised when max_iter epochs end without convergence.
dropout             fastmlp's own (not in scikit-learn), default 0.0: a Dropout layer of this
                    rate in [0, 1) after each hidden layer (0 adds none). It is active in fit and
                    partial_fit only (loss_curve_ is the training loss with dropout applied);
                    predict, predict_proba, score and the early_stopping score use the whole
                    network. Its masks follow from random_state, so an int still reproduces.
random_state        seeds weight initialization, shuffling and the validation split; with an int
                    two fits give the same model.
device              "auto" (CUDA when available), "cpu", "cuda", "cuda:N".
dtype               as scikit-learn: float32 input gives float32 coefs_, intercepts_ and
                    predictions, float64 (or anything else) float64; float64 trains the CPU's
                    float64 engine (on CUDA a float32 engine, its results cast to float64).
verbose             prints scikit-learn's lines: "Iteration N, loss = ..." per epoch (and the
                    validation score with early stopping).
partial_fit         one epoch over the given batch (the classifier needs classes= on the first
                    call); the optimizer state persists between calls. With early_stopping=True it
                    raises ValueError, as scikit-learn does; n_iter_no_change may be np.inf (never
                    stop early); a validation split of fewer than 2 samples raises ValueError.
pickling            the fitted network is stored with fastmlp's model.save format (weights and
                    optimizer state); an unpickled CUDA model falls back to the CPU without CUDA.
Multilabel targets (2-D indicator y) and sample_weight are not supported.
"""
from __future__ import annotations

import numbers
import os
import tempfile
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

from .callbacks import Callback

_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "linear": "linear", "sigmoid": "sigmoid", "leaky_relu": "leaky_relu", "elu": "elu"}
def _solvers():
    from .optimizers import _PER_STEP

    return ("adam", "sgd", "lbfgs", *sorted(k for k in _PER_STEP if k not in ("adam", "sgd")))


_SOLVERS = _solvers()


# Input dtypes kept as given (anything else becomes float64, as in scikit-learn): float64 data
# trains the CPU's float64 engine and gives float64 coefs_ and predictions.
_FLOATS = (np.float64, np.float32)


def _stochastic_solver(est):
    # scikit-learn hides partial_fit for lbfgs, with this message.
    if est.solver == "lbfgs":
        raise AttributeError(f"partial_fit is only available for stochastic optimizers. {est.solver} is not stochastic.")
    return True


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)


class _Convergence(Callback):
    """scikit-learn's stopping rule (_update_no_improvement_count), evaluated after each epoch."""

    def __init__(self, est, score_fn=None):
        super().__init__()
        self.est = est
        self.score_fn = score_fn  # (logs) -> validation score, higher is better; None: training loss rule
        self.count = 0
        self.converged = False
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        est = self.est
        loss = float(logs["loss"])
        est.loss_curve_.append(loss)
        est.n_iter_ += 1
        est.t_ += self.params.get("samples", 0)
        if est.verbose:  # scikit-learn's lines, not Sequential.fit's progress
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
        if self.score_fn is not None:
            score = float(self.score_fn(logs))
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            self.count = self.count + 1 if score < est.best_validation_score_ + est.tol else 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.best_weights = self.model.get_weights()
        else:
            if est.best_loss_ is None:  # partial_fit after a fit with early stopping (scikit-learn's too)
                est.best_loss_ = np.inf
            self.count = self.count + 1 if loss > est.best_loss_ - est.tol else 0
            if loss < est.best_loss_:
                est.best_loss_ = loss
        if self.count > est.n_iter_no_change:
            self.converged = True
            self.model.stop_training = True
            if est.verbose:
                what = "Validation score" if self.score_fn is not None else "Training loss"
                print(f"{what} did not improve more than tol={est.tol} for {est.n_iter_no_change} consecutive "
                      "epochs. Stopping.")


class _BaseMLP(BaseEstimator):
    _is_classifier = False

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=1e-4, dropout=0.0,
                 batch_size="auto", learning_rate_init=1e-3, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, device="auto"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.dropout = dropout
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.device = device

    # ---------------------------------------------------------------- validation
    def _hidden(self):
        h = self.hidden_layer_sizes
        if isinstance(h, numbers.Integral) and not isinstance(h, bool):
            h = [h]
        try:
            h = list(h)
        except TypeError:
            raise ValueError(f"hidden_layer_sizes must be an int or a sequence of ints, got {h!r}") from None
        for u in h:
            if isinstance(u, bool) or not isinstance(u, numbers.Integral) or u <= 0:
                raise ValueError(f"hidden_layer_sizes must contain positive integers, got {self.hidden_layer_sizes!r}")
        return [int(u) for u in h]

    def _check_params(self):
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not supported; choose one of "
                             f"{', '.join(sorted(_ACTIVATIONS))}")
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver {self.solver!r} is not supported; choose one of {', '.join(_SOLVERS)}")
        for name, low in (("alpha", 0.0), ("tol", 0.0)):
            v = getattr(self, name)
            if not _is_number(v) or v < low:
                raise ValueError(f"{name} must be a finite number >= {low}, got {v!r}")
        if not (_is_number(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not _is_number(self.learning_rate_init) or self.learning_rate_init <= 0:
            raise ValueError(f"learning_rate_init must be > 0, got {self.learning_rate_init!r}")
        v = self.n_iter_no_change  # np.inf: never stop early (scikit-learn accepts it)
        if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and (v == np.inf or
                                                                             (float(v).is_integer() and v >= 1))):
            raise ValueError(f"n_iter_no_change must be a positive integer or np.inf, got {v!r}")
        for name in ("max_iter", "max_fun"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (_is_number(self.validation_fraction) and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        b = self.batch_size
        if b != "auto" and (isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {b!r}")
        for name in ("beta_1", "beta_2"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not _is_number(self.epsilon) or self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon!r}")
        if not _is_number(self.momentum) or self.momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {self.momentum!r}")
        from .models import resolve_device

        return self._hidden(), resolve_device(self.device)

    def _effective_batch(self, n):
        if self.solver == "lbfgs":  # full batch; batch_size is ignored, as in scikit-learn
            return n
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn(f"Got batch_size={self.batch_size} larger than the {n} training samples; it is clipped "
                          f"to {n}", UserWarning, stacklevel=3)
        return min(int(self.batch_size), n)

    # -------------------------------------------------------------------- model
    def _optimizer(self):
        from . import optimizers as O

        lr = float(self.learning_rate_init)
        if self.solver == "lbfgs":
            # scipy's L-BFGS-B as scikit-learn calls it: history 10, gtol = tol, maxiter, maxfun,
            # and its default relative loss tolerance (2.2e-9, here absolute).
            return O.LBFGS(max_iter=int(self.max_iter), max_eval=int(self.max_fun), tolerance_grad=float(self.tol),
                           tolerance_change=2.220446049250313e-09, history_size=10, line_search_fn="strong_wolfe")
        if self.solver == "sgd":
            nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
            return O.SGD(lr=lr, momentum=float(self.momentum), nesterov=nesterov)
        if self.solver in ("adam", "adamw"):
            cls = O.Adam if self.solver == "adam" else O.AdamW
            return cls(lr=lr, betas=(float(self.beta_1), float(self.beta_2)), eps=float(self.epsilon))
        return O.get(self.solver).__class__(lr=lr)

    def _build_model(self, n_features, n_out, batch, hidden, device, seed, dtype=np.float32):
        import fastmlp as fm

        l2 = float(self.alpha) / (2.0 * batch) * (1.0 if self._is_classifier else 2.0)
        reg = fm.regularizers.L2(l2) if l2 > 0 else None
        act = _ACTIVATIONS[self.activation]
        layers, fan_in = [], n_features
        for units in hidden:
            layers.append(fm.Dense(units, act, input_dim=fan_in, kernel_regularizer=reg))
            if self.dropout > 0:  # seeded from the model's seed (random_state) and its position
                layers.append(fm.Dropout(float(self.dropout)))
            fan_in = units
        out_act, loss, metrics = self._output(n_out)
        layers.append(fm.Dense(n_out, out_act, input_dim=fan_in, kernel_regularizer=reg))
        model = fm.Sequential(layers, seed=seed, name=type(self).__name__)
        # float64 trains in float64 on the CPU (the GPU engine is float32; results are cast back)
        engine_dtype = "float64" if np.dtype(dtype) == np.float64 and device == "cpu" else "float32"
        model.compile(self._optimizer(), loss, metrics=metrics, device=device, dtype=engine_dtype)
        return model

    def _reset_state(self):
        self.loss_curve_ = []
        self.n_iter_ = 0
        self.t_ = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _set_weight_attrs(self):
        w = [a.astype(self._dtype, copy=False) for a in self.model_.get_weights()]
        self.coefs_ = w[0::2]
        self.intercepts_ = w[1::2]
        self.n_layers_ = len(self.coefs_) + 1

    def _train(self, X, y_fit, y_orig, incremental):
        """Shared fit / partial_fit. y_fit: model targets (class ids or floats); y_orig for the split."""
        hidden, device = self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        rs = check_random_state(self.random_state)
        reuse = hasattr(self, "model_") and (incremental or self.warm_start)
        early = self.early_stopping and not incremental and self.solver != "lbfgs"  # as scikit-learn
        X_val = y_val = None
        if early:
            from sklearn.model_selection import train_test_split

            stratify = y_orig if self._is_classifier else None
            X, X_val, y_fit, y_val = train_test_split(X, y_fit, random_state=rs, test_size=self.validation_fraction,
                                                      stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of your "
                                 "dataset.")
        n = X.shape[0]
        batch = self._effective_batch(n)
        if not reuse:
            seed = int(rs.randint(np.iinfo(np.int32).max))
            self._dtype = X.dtype  # of coefs_, intercepts_ and predictions (scikit-learn keeps the input's)
            self.model_ = self._build_model(X.shape[1], self.n_outputs_, batch, hidden, device, seed, X.dtype)
            self._reset_state()
        elif not incremental:
            self._reset_state()
        score_fn = None
        validation_data = None
        if early:
            if self._is_classifier:
                validation_data = (X_val, y_val)
                score_fn = lambda logs: logs["val_accuracy"]  # noqa: E731
            else:
                from sklearn.metrics import r2_score

                score_fn = lambda logs: r2_score(y_val, self.model_.predict(X_val))  # noqa: E731
        if self.solver == "lbfgs":
            return self._train_lbfgs(X, y_fit)
        stopper = _Convergence(self, score_fn)
        epochs = 1 if incremental else int(self.max_iter)
        self.model_.fit(X, y_fit, batch_size=batch, epochs=epochs, verbose=0,
                        shuffle=bool(self.shuffle), callbacks=[stopper], validation_data=validation_data)
        self._no_improvement_count = stopper.count  # scikit-learn's name for the stopping rule's counter
        if early and stopper.best_weights is not None:
            self.model_.set_weights(stopper.best_weights)
        if not incremental and not stopper.converged:
            warnings.warn(f"Stochastic optimizer: maximum iterations ({self.max_iter}) reached and the optimization "
                          "hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        self._set_weight_attrs()
        return self

    def _train_lbfgs(self, X, y_fit):
        """One full-batch L-BFGS run of up to max_iter iterations (scikit-learn's _fit_lbfgs)."""
        from .optimizers import LBFGS

        opt, wanted = self.model_.optimizer, self._optimizer()
        if not isinstance(opt, LBFGS):
            raise ValueError("warm_start cannot switch a model fitted by another solver to solver='lbfgs'; fit a new "
                             "estimator (or warm_start=False)")
        # A warm start keeps the model and its curvature history, but takes this call's limits.
        opt.max_iter, opt.max_eval, opt.tolerance_grad = wanted.max_iter, wanted.max_eval, wanted.tolerance_grad
        self.model_.fit(X, y_fit, epochs=1, verbose=0)
        result = self.model_._lbfgs_result
        self.n_iter_ = int(result["iterations"])
        self.t_ = X.shape[0] * self.n_iter_
        self.loss_ = float(self.model_.evaluate(X, y_fit)["loss"])
        self.loss_curve_ = None  # scikit-learn keeps none for lbfgs either
        if self.n_iter_ >= self.max_iter or result["evaluations"] >= self.max_fun:
            warnings.warn(f"lbfgs failed to converge after {self.n_iter_} iterations (max_iter={self.max_iter}, "
                          f"max_fun={self.max_fun}): increase them or scale the data", ConvergenceWarning,
                          stacklevel=3)
        self._set_weight_attrs()
        return self

    def _features(self, X, reset):
        return _validate_data(self, X, reset=reset, dtype=_FLOATS, order="C")

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ returns __dict__ itself, not a copy
        model = state.get("model_")
        if model is not None:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "model.fm")
                model.save(path)
                with open(path, "rb") as f:
                    state["model_"] = {"fastmlp_model_bytes": f.read()}
        return state

    def __setstate__(self, state):
        model = state.get("model_")
        if isinstance(model, dict) and "fastmlp_model_bytes" in model:
            from .saving import load_model

            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "model.fm")
                with open(path, "wb") as f:
                    f.write(model["fastmlp_model_bytes"])
                state = dict(state, model_=load_model(path))
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier with scikit-learn's MLPClassifier interface (see module doc).

    Attributes after fit: classes_, n_features_in_ (feature_names_in_ for DataFrames), loss_curve_,
    n_iter_, t_ (samples seen), best_loss_, validation_scores_, best_validation_score_, coefs_,
    intercepts_, n_layers_, n_outputs_, out_activation_ ("logistic" or "softmax"), model_ (the
    underlying fastmlp.Sequential).
    """

    _is_classifier = True

    def _output(self, n_out):
        if n_out == 1:
            return "sigmoid", "binary_crossentropy", ["accuracy"]
        return "softmax", "sparse_categorical_crossentropy", ["accuracy"]

    def _targets(self, y):
        check_classification_targets(y)
        return column_or_1d(y, warn=True)

    def _encode(self, y):
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        bad = self.classes_[idx] != y
        if np.any(bad):
            raise ValueError(f"y contains labels not in classes_ {self.classes_.tolist()}: "
                             f"{np.unique(np.asarray(y)[bad]).tolist()}")
        if len(self.classes_) == 2:
            return idx.astype(np.float32).reshape(-1, 1)
        return idx.astype(np.int64)

    def _set_classes(self, classes):
        classes = np.unique(classes)
        if len(classes) < 2:
            raise ValueError(f"MLPClassifier needs samples of at least 2 classes in the data, but the data contains "
                             f"only one class: {classes.tolist()!r}")
        if hasattr(self, "classes_") and hasattr(self, "model_") and not np.array_equal(self.classes_, classes):
            del self.model_
        self.classes_ = classes
        self.n_outputs_ = 1 if len(classes) == 2 else len(classes)
        self.out_activation_ = "logistic" if len(classes) == 2 else "softmax"

    def fit(self, X, y):
        """Trains for up to max_iter epochs (see the module doc for the stopping rule)."""
        X, y = _validate_data(self, X, y, reset=not (self.warm_start and hasattr(self, "model_")),
                              dtype=_FLOATS, order="C")
        y = self._targets(y)
        classes = np.unique(y)
        if self.warm_start and hasattr(self, "model_") and not np.array_equal(classes, self.classes_):
            raise ValueError(f"warm_start can only be used where `y` has the same classes as in the previous call "
                             f"to fit. Previously got {self.classes_}, `y` has {classes}")
        self._set_classes(classes)
        return self._train(X, self._encode(y), y, incremental=False)

    @available_if(_stochastic_solver)
    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y). The first call needs `classes`, every label that can appear."""
        first = not hasattr(self, "model_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        X, y = _validate_data(self, X, y, reset=first, dtype=_FLOATS, order="C")
        y = self._targets(y)
        if first:
            self._set_classes(classes)
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"`classes={np.unique(classes).tolist()}` is not the same as on the first call to "
                             f"partial_fit ({self.classes_.tolist()})")
        return self._train(X, self._encode(y), y, incremental=True)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in classes_ order."""
        check_is_fitted(self, "model_")
        X = self._features(X, reset=False)
        p = np.asarray(self.model_.predict(X), dtype=self._dtype)
        if self.n_outputs_ == 1:
            p = np.hstack([1.0 - p, p])
        return p

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        proba = self.predict_proba(X)  # checks is-fitted first
        return self.classes_[np.argmax(proba, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor with scikit-learn's MLPRegressor interface (see module doc).

    A 1-D y gives 1-D predictions; a 2-D y (n_samples, n_targets) multi-output predictions.
    Attributes after fit: n_features_in_, loss_curve_, n_iter_, t_, best_loss_, validation_scores_
    (R^2), best_validation_score_, coefs_, intercepts_, n_layers_, n_outputs_, out_activation_
    ("identity"), model_.
    """

    _is_classifier = False

    def _output(self, n_out):
        return "linear", "mse", None

    def _xy(self, X, y, reset):
        X, y = _validate_data(self, X, y, reset=reset, dtype=_FLOATS, order="C", multi_output=True,
                              y_numeric=True)
        self._y_1d = y.ndim == 1
        y2 = np.ascontiguousarray(y.reshape(len(y), -1), dtype=X.dtype)
        if not np.isfinite(y2).all():
            raise ValueError(f"y contains values too large for {X.dtype}")
        return X, y2

    def fit(self, X, y):
        """Trains for up to max_iter epochs (see the module doc for the stopping rule)."""
        warm = self.warm_start and hasattr(self, "model_")
        X, y = self._xy(X, y, reset=not warm)
        if warm and y.shape[1] != self.n_outputs_:
            raise ValueError(f"warm_start needs y with {self.n_outputs_} columns, got {y.shape[1]}")
        if not warm and hasattr(self, "model_"):
            del self.model_
        self.n_outputs_ = y.shape[1]
        self.out_activation_ = "identity"
        return self._train(X, y, y, incremental=False)

    @available_if(_stochastic_solver)
    def partial_fit(self, X, y):
        """One epoch over (X, y); the first call builds the network."""
        first = not hasattr(self, "model_")
        X, y = self._xy(X, y, reset=first)
        if first:
            self.n_outputs_ = y.shape[1]
            self.out_activation_ = "identity"
        elif y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} columns but the model was fitted with {self.n_outputs_}")
        return self._train(X, y, y, incremental=True)

    def predict(self, X):
        check_is_fitted(self, "model_")
        X = self._features(X, reset=False)
        p = np.asarray(self.model_.predict(X), dtype=self._dtype)
        return p.ravel() if self._y_1d else p

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


__all__ = ["MLPClassifier", "MLPRegressor"]
