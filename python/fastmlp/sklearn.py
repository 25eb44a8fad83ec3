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

initialization      scikit-learn's: every kernel and bias from U(-b, b), b = sqrt(6 / (fan_in +
                    fan_out)) (2 instead of 6 for "logistic"), drawn from random_state in its
                    order, so an int random_state starts from scikit-learn's very weights.
losses              classifier: binary cross-entropy on one sigmoid unit (2 classes) or one per
                    label (multilabel y), softmax cross-entropy otherwise; regressor:
                    loss="squared_error" (linear output) or "poisson" (exp output). fastmlp's
                    losses are means over the outputs (mse without scikit-learn's 1/2), so each
                    is a constant factor times scikit-learn's: the L2 penalty and the SGD rate are
                    rescaled by it, so the steps and the minimizer are scikit-learn's, and
                    loss_curve_, loss_ and best_loss_ are reported in scikit-learn's units (tol
                    means the same; one exception: for squared error over K > 1 outputs with
                    alpha > 0, the penalty part of those numbers is 1/K of scikit-learn's, which
                    sums its gradient over the outputs but averages its reported loss).
                    fastmlp's Poisson loss leaves out the constant y log y - y.
alpha (L2 penalty)  scikit-learn adds alpha / (2 * batch weight) * sum(||W||^2) to a batch's loss;
                    fastmlp's L2 on every kernel (not the biases) is set to the same, with the
                    nominal batch size (scikit-learn divides a short last batch's by its own).
sample_weight       fit / partial_fit: native per-row weights. scikit-learn divides a batch's
                    weighted loss and its penalty by its total weight, fastmlp the loss by its row
                    count: the weights are rescaled (to mean 1 in the fit that builds the network,
                    and by the penalty's build-time scale in later calls), so a full batch (lbfgs)
                    gives scikit-learn's objective exactly, mini-batches on average.
solver              "sgd" (momentum, nesterovs_momentum; learning_rate "constant", "invscaling"
                    with power_t, "adaptive", updated per epoch as in scikit-learn), "adam"
                    (beta_1, beta_2, epsilon), "adamw" (as adam, plus fastmlp's default decoupled
                    weight_decay=1e-2), any other fm.optimizers name ("rmsprop", "adagrad",
                    "adadelta", "nadam", "radam", "lamb": their torch defaults except lr =
                    learning_rate_init). "lbfgs": full-batch L-BFGS (fm.optimizers.LBFGS with the
                    strong-Wolfe line search, history 10), at most max_iter iterations and max_fun
                    loss evaluations, stopping when max |gradient| <= tol (scipy's gtol); n_iter_
                    counts its iterations, loss_ is the final training loss; no loss_curve_,
                    partial_fit, early stopping or dropout (its loss must be deterministic). A
                    warm-start fit starts a new optimizer, as scikit-learn does; _optimizer is the
                    network's fm optimizer (its learning_rate the current rate, in fastmlp's units).
batch_size          "auto" = min(200, n_samples); larger values are clipped with a warning.
stopping            as scikit-learn: without early_stopping, training stops when the training
                    loss has not improved by tol for more than n_iter_no_change consecutive
                    epochs; with early_stopping a validation_fraction of the data is held out
                    (stratified on scikit-learn's label encoding, not for multilabel y), the score
                    is its accuracy (classifier) or R^2 (regressor), and the best epoch's weights
                    are restored. A ConvergenceWarning is raised when max_iter epochs end without
                    convergence. n_iter_ counts the epochs of the last call; t_ and loss_curve_
                    go on over warm starts and partial_fit.
diverging runs      a NaN/Inf training loss ends training (fastmlp's engine never applies the bad
                    step): with early_stopping the epoch's score is NaN, a ConvergenceWarning says
                    so and the best weights are restored; without it fit raises scikit-learn's
                    ValueError ("Solver produced non-finite parameter weights..."). A call that
                    raises leaves the estimator as it was (fitted attributes, weights, optimizer).
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
sparse X            CSR/CSC/COO matrices and arrays are accepted and densified (the layers are dense).
verbose             prints scikit-learn's lines: "Iteration N, loss = ..." per epoch (and the
                    validation score with early stopping).
partial_fit         one epoch over the given batch (the classifier needs classes= on the first
                    call); the optimizer state persists between calls. With early_stopping=True it
                    raises ValueError, as scikit-learn does; n_iter_no_change may be np.inf (never
                    stop early); a validation split of fewer than 2 samples raises ValueError.
coefs_/intercepts_   as in scikit-learn, lists a user assigns are used: partial_fit (or a warm-start
                    fit) trains on from them, predict predicts with them (assign new lists; editing
                    the arrays in place is not noticed).
pickling            the fitted network is stored with fastmlp's model.save format (weights and
                    optimizer state); an unpickled CUDA model falls back to the CPU without CUDA.
"""
from __future__ import annotations

import contextlib
import copy
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
                "linear": "linear", "sigmoid": "sigmoid", "leaky_relu": "leaky_relu", "elu": "elu", "selu": "selu",
                "softplus": "softplus", "gelu": "gelu", "silu": "silu", "swish": "silu"}
def _solvers():
    from .optimizers import _PER_STEP

    return ("adam", "sgd", "lbfgs", *sorted(k for k in _PER_STEP if k not in ("adam", "sgd")))


_SOLVERS = _solvers()
# scikit-learn's learning-rate schedules for solver="sgd" (others ignore learning_rate, as there).
_SCHEDULES = ("constant", "invscaling", "adaptive")


# Input dtypes kept as given (anything else becomes float64, as in scikit-learn): float64 data
# trains the CPU's float64 engine and gives float64 coefs_ and predictions.
_FLOATS = (np.float64, np.float32)


# Sparse X (scipy matrices and arrays) is accepted and densified: the engine's layers are dense,
# so the rows are copied into it as dense rows anyway.
_SPARSE = ("csr", "csc", "coo")


def _dense(X):
    return np.ascontiguousarray(X.toarray()) if hasattr(X, "toarray") else X


def _sample_weight(sample_weight, X):
    if sample_weight is None:
        return None
    from sklearn.utils.validation import _check_sample_weight

    return _check_sample_weight(sample_weight, X, dtype=X.dtype, ensure_non_negative=True)


def _stochastic_solver(est):
    # scikit-learn hides partial_fit for lbfgs, with this message.
    if est.solver == "lbfgs":
        raise AttributeError(f"partial_fit is only available for stochastic optimizers. {est.solver} is not stochastic.")
    return True


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)


class _Convergence(Callback):
    """scikit-learn's per-epoch bookkeeping (_update_no_improvement_count, the SGD optimizer's
    iteration_ends and trigger_stopping), evaluated after each epoch."""

    # A diverging epoch ends fit here (the estimator decides what it means) instead of raising
    # fm.NonFiniteLossError; the engine never applied the non-finite step, so weights stay finite.
    handles_nonfinite = True

    def __init__(self, est, score_fn=None):
        super().__init__()
        self.est = est
        self.score_fn = score_fn  # (logs) -> validation score, higher is better; None: training loss rule
        self.converged = False
        self.diverged = False
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        est = self.est
        loss = float(logs["loss"]) / est._loss_factor()  # in scikit-learn's units, as tol is
        est.loss_curve_.append(loss)
        est.loss_ = loss
        est.n_iter_ += 1
        est.t_ += self.params.get("samples", 0)
        if est.verbose:  # scikit-learn's lines, not Sequential.fit's progress
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
        if not np.isfinite(loss):
            # scikit-learn's weights turn NaN here and every later score is NaN; fastmlp's engine
            # stopped before the bad update, so the run ends now with the same record.
            self.diverged = True
            if self.score_fn is not None:
                est.validation_scores_.append(float("nan"))
            self.model.stop_training = True
            return
        if self.score_fn is not None:
            score = float(self.score_fn(logs))
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            est._no_improvement_count = (est._no_improvement_count + 1
                                         if score < est.best_validation_score_ + est.tol else 0)
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.best_weights = self.model.get_weights()
        else:
            if est.best_loss_ is None:  # partial_fit after a fit with early stopping (scikit-learn's too)
                est.best_loss_ = np.inf
            est._no_improvement_count = est._no_improvement_count + 1 if loss > est.best_loss_ - est.tol else 0
            if loss < est.best_loss_:
                est.best_loss_ = loss
        sgd = est.solver == "sgd"
        if sgd and est.learning_rate == "invscaling":  # per epoch, from the samples seen (t_)
            self.model.set_learning_rate(est._sgd_rate(float(est.learning_rate_init) /
                                                       (est.t_ + 1) ** float(est.power_t)))
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.score_fn is not None else "Training loss"
            msg = f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} consecutive epochs."
            lr = self.model.get_learning_rate() * est._gradient_factor()  # in scikit-learn's units
            if sgd and est.learning_rate == "adaptive" and lr > 1e-6:
                self.model.set_learning_rate(est._sgd_rate(lr / 5.0))
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"{msg} Setting learning rate to {lr / 5.0:f}")
                return
            self.converged = True
            self.model.stop_training = True
            if est.verbose:
                print(msg + (" Learning rate too small. Stopping." if sgd and est.learning_rate == "adaptive"
                             else " Stopping."))


class _BaseMLP(BaseEstimator):
    _is_classifier = False

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=1e-4, dropout=0.0,
                 batch_size="auto", learning_rate="constant", learning_rate_init=1e-3, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, device="auto"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.dropout = dropout
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
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
        if self.learning_rate not in _SCHEDULES:
            raise ValueError(f"learning_rate must be one of {', '.join(_SCHEDULES)}, got {self.learning_rate!r}")
        if not _is_number(self.power_t) or self.power_t < 0:
            raise ValueError(f"power_t must be a finite number >= 0, got {self.power_t!r}")
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
    def _new_optimizer(self):
        """The fastmlp optimizer for solver and its hyper-parameters, at learning_rate_init."""
        from . import optimizers as O

        lr = float(self.learning_rate_init)
        if self.solver == "lbfgs":
            # scipy's L-BFGS-B as scikit-learn calls it: history 10, gtol = tol, maxiter, maxfun,
            # and its default relative loss tolerance (2.2e-9, here absolute).
            return O.LBFGS(max_iter=int(self.max_iter), max_eval=int(self.max_fun),
                           tolerance_grad=float(self.tol) * self._gradient_factor(),
                           tolerance_change=2.220446049250313e-09, history_size=10, line_search_fn="strong_wolfe")
        if self.solver == "sgd":
            nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
            return O.SGD(lr=self._sgd_rate(lr), momentum=float(self.momentum), nesterov=nesterov)
        if self.solver in ("adam", "adamw"):
            cls = O.Adam if self.solver == "adam" else O.AdamW
            return cls(lr=lr, betas=(float(self.beta_1), float(self.beta_2)), eps=float(self.epsilon))
        return O.get(self.solver).__class__(lr=lr)

    def _l2(self, batch, weight_mean):
        """fastmlp's L2 coefficient for scikit-learn's alpha: it divides the penalty by a batch's
        total weight (batch rows of weight_mean on average), and fastmlp's gradient is
        _gradient_factor() times its own."""
        return float(self.alpha) / (2.0 * batch * weight_mean) * self._gradient_factor()

    def _build_model(self, n_features, n_out, l2, hidden, device, seed, dtype=np.float32):
        import fastmlp as fm

        self._l2_now = l2
        out_act, loss, metrics = self._output(n_out)
        # Dropout layers are seeded from the model's seed (random_state) and their position.
        layers = fm.layers.mlp_stack(n_features, hidden, n_out, activation=_ACTIVATIONS[self.activation],
                                     output_activation=out_act,
                                     kernel_regularizer=fm.regularizers.L2(l2) if l2 > 0 else None,
                                     dropout=float(self.dropout))
        model = fm.Sequential(layers, seed=seed, name=type(self).__name__)
        # float64 trains in float64 on the CPU (the GPU engine is float32; results are cast back)
        engine_dtype = "float64" if np.dtype(dtype) == np.float64 and device == "cpu" else "float32"
        model.compile(self._new_optimizer(), loss, metrics=metrics, device=device, dtype=engine_dtype)
        return model

    def _initial_weights(self, rs, n_features, hidden, dtype):
        """scikit-learn's initialization (_init_coef), drawn from rs in its order: each layer's
        kernel and then its bias from U(-b, b), b = sqrt(6 / (fan_in + fan_out)) (2 instead of 6
        for the logistic activation)."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        units = [n_features, *hidden, self.n_outputs_]
        weights = []
        for fan_in, fan_out in zip(units[:-1], units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            weights.append(rs.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype, copy=False))
            weights.append(rs.uniform(-bound, bound, fan_out).astype(dtype, copy=False))
        return weights

    def _sgd_rate(self, rate):
        """fastmlp's SGD rate for scikit-learn's `rate`: fastmlp's gradient is _gradient_factor()
        times scikit-learn's, and dividing the rate makes the steps equal. (The other solvers
        normalize the gradient's scale away.)"""
        return rate / self._gradient_factor()

    def _gradient_factor(self):
        """fastmlp's gradient over scikit-learn's: the loss factor, except where scikit-learn's
        gradient is not its reported loss's (squared error over K outputs: it sums them)."""
        return self._loss_factor()

    def _recompile(self, l2, optimizer):
        """The network with L2 coefficient l2 on its kernels, its weights kept; with `optimizer` a
        new one (a warm-start fit), else the current one with its state and step (partial_fit)."""
        import fastmlp as fm

        m = self.model_
        kept = None if optimizer is not None else m._engine.get_snapshot()
        for layer in m.layers:
            if isinstance(layer, fm.Dense):
                layer.kernel_regularizer = fm.regularizers.L2(l2) if l2 > 0 else None
        args = m._compile_args
        m.compile(optimizer if optimizer is not None else args["optimizer"], m.loss,
                  metrics=args["metric_key"] and [args["metric_key"]], device=args["device"], dtype=args["dtype"])
        if kept is not None:
            _, state, step = kept
            m._engine.set_state(state)
            m._engine.step = step
        self._l2_now = l2

    @property
    def _optimizer(self):
        """The fitted network's optimizer (scikit-learn's private attribute of the same name); its
        learning_rate is the current rate, moved by the invscaling and adaptive schedules."""
        model = self.__dict__.get("model_")
        if model is None:
            raise AttributeError("_optimizer exists once the estimator is fitted")
        return model.optimizer

    def _reset_state(self, keep_existing=False):
        """The training counters at their start (keep_existing: only those not set yet)."""
        fresh = {"loss_curve_": [], "n_iter_": 0, "t_": 0, "_no_improvement_count": 0}
        if self.early_stopping:
            fresh.update(validation_scores_=[], best_validation_score_=-np.inf, best_loss_=None)
        else:
            fresh.update(validation_scores_=None, best_validation_score_=None, best_loss_=np.inf)
        for name, value in fresh.items():
            if not (keep_existing and name in self.__dict__):
                setattr(self, name, value)

    def _user_weights(self, n_features, hidden, dtype):
        """coefs_ and intercepts_ as the user assigned them (scikit-learn trains on from, and
        predicts with, whatever lists they hold), as the network's weights; None when they are
        still the lists fit set. Assigning new lists is what is noticed, not editing them in place."""
        coefs, intercepts = self.__dict__.get("coefs_"), self.__dict__.get("intercepts_")
        if coefs is None or intercepts is None:
            return None
        seen = self.__dict__.get("_weights_seen")
        if seen is not None and coefs is seen[0] and intercepts is seen[1]:
            return None
        units = [n_features, *hidden, self.n_outputs_]
        if len(coefs) != len(units) - 1 or len(intercepts) != len(units) - 1:
            raise ValueError(f"coefs_ and intercepts_ must hold {len(units) - 1} arrays each for "
                             f"hidden_layer_sizes={tuple(hidden)}, got {len(coefs)} and {len(intercepts)}")
        weights = []
        for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:])):
            kernel = np.asarray(coefs[i], dtype=dtype)
            bias = np.asarray(intercepts[i], dtype=dtype).reshape(-1)
            if kernel.shape != (fan_in, fan_out) or bias.shape != (fan_out,):
                raise ValueError(f"coefs_[{i}] / intercepts_[{i}] have shapes {kernel.shape} / {bias.shape}; the "
                                 f"network needs {(fan_in, fan_out)} / {(fan_out,)}")
            weights += [kernel, bias]
        return weights

    def _network(self):
        """The fitted network for predictions, first given the coefs_ / intercepts_ a user assigned."""
        check_is_fitted(self, "model_")
        seen = self.__dict__.get("_weights_seen")
        if seen is None or self.__dict__.get("coefs_") is not seen[0] or self.__dict__.get("intercepts_") is not seen[1]:
            hidden = [c.shape[1] for c in self._weights_seen[0][:-1]] if seen else self._hidden()
            user = self._user_weights(self.n_features_in_, hidden, self._dtype)
            if user is not None:
                self.model_.set_weights(user)
                self._set_weight_attrs()
        return self.model_

    def _set_weight_attrs(self):
        w = [a.astype(self._dtype, copy=False) for a in self.model_.get_weights()]
        self.coefs_ = w[0::2]
        self.intercepts_ = w[1::2]
        self.n_layers_ = len(self.coefs_) + 1
        self._weights_seen = (self.coefs_, self.intercepts_)  # what _user_weights compares against

    # ------------------------------------------------------------------ failure
    _FITTED_STATE = ("model_", "coefs_", "intercepts_", "n_layers_", "loss_", "loss_curve_", "n_iter_", "t_",
                     "best_loss_", "validation_scores_", "best_validation_score_", "_no_improvement_count",
                     "_dtype", "_weights_seen", "classes_", "n_outputs_", "out_activation_", "_multilabel",
                     "n_features_in_", "feature_names_in_", "_y_1d", "_l2_now")

    @contextlib.contextmanager
    def _unchanged_on_failure(self):
        """fit / partial_fit: whatever raises leaves the estimator (fitted attributes, network,
        optimizer) as the call found it."""
        checkpoint = self._checkpoint()
        try:
            yield
        except BaseException:
            self._restore(checkpoint)
            raise

    def _checkpoint(self):
        """Everything a failed fit or partial_fit could change: the estimator's fitted attributes
        and, for a network that is kept, its weights, optimizer state, step and learning rate."""
        attrs = {k: copy.copy(self.__dict__[k]) for k in self._FITTED_STATE if k in self.__dict__}
        model = self.__dict__.get("model_")
        net = None
        if model is not None and model._engine is not None:
            net = (model._engine.get_snapshot(), model.get_learning_rate(), model._epochs_seen)
        return attrs, model, net

    def _restore(self, checkpoint):
        attrs, model, net = checkpoint
        for k in self._FITTED_STATE:
            self.__dict__.pop(k, None)
        self.__dict__.update(attrs)
        if net is not None and model._engine is not None:
            (params, state, step), lr, epochs_seen = net
            model._engine.set_params(params)
            model._engine.set_state(state)
            model._engine.step = step
            model.set_learning_rate(lr)
            model._epochs_seen = epochs_seen

    # ------------------------------------------------------------------ training
    def _train(self, X, y_fit, y_orig, incremental, sample_weight=None):
        """Shared fit / partial_fit. y_fit: model targets (class ids or floats); y_orig for the split."""
        hidden, device = self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        return self._train_or_fail(X, y_fit, y_orig, incremental, sample_weight, hidden, device)

    def _train_or_fail(self, X, y_fit, y_orig, incremental, sample_weight, hidden, device):
        rs = check_random_state(self.random_state)
        continuing = incremental or self.warm_start
        # Weights the user assigned to coefs_ / intercepts_ are trained on, as in scikit-learn.
        user = self._user_weights(X.shape[1], hidden, X.dtype) if continuing else None
        reuse = hasattr(self, "model_") and continuing
        early = self.early_stopping and not incremental and self.solver != "lbfgs"  # as scikit-learn
        # Drawn first, as scikit-learn does: an int random_state gives its very initial weights.
        initial = None if reuse else user if user is not None else self._initial_weights(rs, X.shape[1], hidden,
                                                                                         X.dtype)
        X_val = y_val = sw_val = None
        if early:
            from sklearn.model_selection import train_test_split

            # scikit-learn stratifies on its label-binarized y (not for multilabel targets): the
            # same split for the same random_state, and its message for a class of one member.
            stratify = self._stratify_on(y_orig)
            arrays = (X, y_fit, y_orig) if sample_weight is None else (X, y_fit, y_orig, sample_weight)
            parts = train_test_split(*arrays, random_state=rs, test_size=self.validation_fraction, stratify=stratify)
            X, X_val, y_fit, _, _, y_val = parts[:6]
            if sample_weight is not None:
                sample_weight, sw_val = parts[6:8]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of your "
                                 "dataset.")
        n = X.shape[0]
        batch = self._effective_batch(n)
        weight_mean = 1.0
        if sample_weight is not None:
            weight_mean = float(np.mean(sample_weight))
            if not weight_mean > 0:
                raise ValueError("sample_weight sums to 0 over the training samples: nothing to fit")
            # scikit-learn's batch loss is (sum(w * loss) + alpha/2 ||W||^2) / sum(w); fastmlp's
            # (Keras's) divides sum(w * loss) by the rows: weights rescaled to mean 1, and the L2
            # coefficient set for this call's batch and mean weight (_l2), give its objective.
            sample_weight = np.ascontiguousarray(sample_weight / weight_mean, dtype=X.dtype)
        l2 = self._l2(batch, weight_mean)
        if not reuse:
            seed = int(rs.randint(np.iinfo(np.int32).max))
            self._dtype = X.dtype  # of coefs_, intercepts_ and predictions (scikit-learn keeps the input's)
            self.model_ = self._build_model(X.shape[1], self.n_outputs_, l2, hidden, device, seed, X.dtype)
            self.model_.set_weights(initial)
            self._reset_state(keep_existing=user is not None)  # scikit-learn goes on with the user's counters
        else:
            if user is not None:
                self.model_.set_weights(user)
            if not incremental:  # a warm-start fit: a new optimizer, as scikit-learn's
                self._recompile(l2, self._new_optimizer())
            elif l2 != self.__dict__.get("_l2_now"):  # partial_fit with another batch or mean weight
                self._recompile(l2, None)
        if self.solver == "lbfgs":
            return self._train_lbfgs(X, y_fit, sample_weight)
        self.n_iter_ = 0  # epochs of this call, as scikit-learn counts them (t_ and loss_curve_ go on)
        score_fn = None
        if early:
            score_fn = lambda logs: self._score_with_network(X_val, y_val, sw_val)  # noqa: E731
        stopper = _Convergence(self, score_fn)
        epochs = 1 if incremental else int(self.max_iter)
        self.model_.fit(X, y_fit, batch_size=batch, epochs=epochs, verbose=0, shuffle=bool(self.shuffle),
                        callbacks=[stopper], sample_weight=sample_weight)
        if early and stopper.best_weights is not None:
            self.model_.set_weights(stopper.best_weights)
        if stopper.diverged and not early:
            # scikit-learn's weights would be NaN now and it raises this; fastmlp's engine kept the
            # last finite ones, but the run diverged all the same.
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large values "
                             f"and need to be preprocessed. (fastmlp: the training loss became NaN or Inf in epoch "
                             f"{self.n_iter_}; scale the inputs or lower learning_rate_init.)")
        if stopper.diverged:
            warnings.warn(f"The training loss became NaN or Inf in epoch {self.n_iter_}; training stopped and the "
                          "weights of the best validation score were restored.", ConvergenceWarning, stacklevel=3)
        elif not incremental and not stopper.converged:
            warnings.warn(f"Stochastic optimizer: maximum iterations ({self.max_iter}) reached and the optimization "
                          "hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        self._set_weight_attrs()
        return self

    def _stratify_on(self, y_orig):
        return None

    def _score_with_network(self, X, y, sample_weight):
        """The validation score of the network as it is now: NaN when a prediction is not finite
        (scikit-learn's _score_with_function)."""
        out = np.asarray(self.model_.predict(X))
        if not np.isfinite(out).all():
            return float("nan")
        return float(self._score_outputs(out, y, sample_weight))

    def _train_lbfgs(self, X, y_fit, sample_weight=None):
        """One full-batch L-BFGS run of up to max_iter iterations (scikit-learn's _fit_lbfgs)."""
        from .optimizers import LBFGS

        opt, wanted = self.model_.optimizer, self._new_optimizer()
        if not isinstance(opt, LBFGS):
            raise ValueError("warm_start cannot switch a model fitted by another solver to solver='lbfgs'; fit a new "
                             "estimator (or warm_start=False)")
        # A warm-start fit got a new L-BFGS (_recompile), as scikit-learn restarts scipy's from the
        # current weights; this call's limits in any case.
        opt.max_iter, opt.max_eval, opt.tolerance_grad = wanted.max_iter, wanted.max_eval, wanted.tolerance_grad
        from .training import NonFiniteLossError

        try:
            self.model_.fit(X, y_fit, epochs=1, verbose=0, sample_weight=sample_weight)
        except NonFiniteLossError as e:
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large values "
                             f"and need to be preprocessed. (fastmlp: L-BFGS met a NaN or Inf loss: {e})") from None
        result = self.model_._lbfgs_result
        self.n_iter_ = int(result["iterations"])
        self.t_ = X.shape[0] * self.n_iter_
        self.loss_ = float(self.model_.evaluate(X, y_fit, sample_weight=sample_weight)["loss"]) / self._loss_factor()
        self.loss_curve_ = None  # scikit-learn keeps none for lbfgs either
        if self.n_iter_ >= self.max_iter or result["evaluations"] >= self.max_fun:
            warnings.warn(f"lbfgs failed to converge after {self.n_iter_} iterations (max_iter={self.max_iter}, "
                          f"max_fun={self.max_fun}): increase them or scale the data", ConvergenceWarning,
                          stacklevel=3)
        self._set_weight_attrs()
        return self

    def _features(self, X, reset):
        return _dense(_validate_data(self, X, reset=reset, dtype=_FLOATS, order="C", accept_sparse=_SPARSE))

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
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier with scikit-learn's MLPClassifier interface (see module doc).

    y may hold labels (binary or multiclass) or a 2-D 0/1 indicator matrix (multilabel: one
    sigmoid output per label, predict_proba per label, predict a 0/1 matrix).
    Attributes after fit: classes_, n_features_in_ (feature_names_in_ for DataFrames), loss_,
    loss_curve_, n_iter_, t_ (samples seen), best_loss_, validation_scores_,
    best_validation_score_, coefs_, intercepts_, n_layers_, n_outputs_, out_activation_
    ("logistic" or "softmax"), model_ (the underlying fastmlp.Sequential).
    """

    _is_classifier = True

    def _output(self, n_out):
        if n_out == 1 or self._multilabel:
            return "sigmoid", "binary_crossentropy", ["accuracy"]
        return "softmax", "sparse_categorical_crossentropy", ["accuracy"]

    def _loss_factor(self):
        # fastmlp's binary cross-entropy is the mean over the outputs, scikit-learn's their sum.
        return 1.0 / self.n_outputs_ if self._multilabel else 1.0

    def _xy(self, X, y, reset):
        X, y = _validate_data(self, X, y, reset=reset, dtype=_FLOATS, order="C", accept_sparse=_SPARSE,
                              multi_output=True)
        X = _dense(X)
        if y.ndim == 2 and y.shape[1] > 1:
            from sklearn.utils.multiclass import type_of_target

            kind = type_of_target(y)
            if kind != "multilabel-indicator":
                raise ValueError(f"a 2-D y must be a multilabel indicator matrix of 0s and 1s, got {kind} targets")
            return X, np.asarray(y), True
        check_classification_targets(y)
        return X, column_or_1d(y, warn=True), False

    def _encode(self, y):
        if self._multilabel:
            return np.ascontiguousarray(y, dtype=np.float32)
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        bad = self.classes_[idx] != y
        if np.any(bad):
            raise ValueError(f"y contains labels not in classes_ {self.classes_.tolist()}: "
                             f"{np.unique(np.asarray(y)[bad]).tolist()}")
        if len(self.classes_) == 2:
            return idx.astype(np.float32).reshape(-1, 1)
        return idx.astype(np.int64)

    def _set_classes(self, classes, multilabel, n_labels=None):
        classes = np.unique(classes)
        if multilabel:
            if n_labels is not None and len(classes) != n_labels:
                raise ValueError(f"classes has {len(classes)} labels but the multilabel y has {n_labels} columns")
        elif len(classes) < 2:
            raise ValueError(f"MLPClassifier needs samples of at least 2 classes in the data, but the data contains "
                             f"only one class: {classes.tolist()!r}")
        if hasattr(self, "model_") and (not np.array_equal(getattr(self, "classes_", None), classes)
                                        or self._multilabel != multilabel):
            del self.model_
        self.classes_ = classes
        self._multilabel = multilabel
        self.n_outputs_ = len(classes) if multilabel or len(classes) > 2 else 1
        self.out_activation_ = "logistic" if multilabel or len(classes) == 2 else "softmax"

    def _stratify_on(self, y_orig):
        if self._multilabel:
            return None  # as scikit-learn: no stratification for multilabel targets
        from sklearn.preprocessing import LabelBinarizer

        return LabelBinarizer().fit(self.classes_).transform(y_orig).astype(bool)

    def _decode(self, out):
        if self._multilabel:
            return (out > 0.5).astype(int)
        if self.n_outputs_ == 1:
            return self.classes_[(out[:, 0] > 0.5).astype(int)]
        return self.classes_[np.argmax(out, axis=1)]

    def _score_outputs(self, out, y, sample_weight):
        from sklearn.metrics import accuracy_score

        return accuracy_score(y, self._decode(out), sample_weight=sample_weight)

    def fit(self, X, y, sample_weight=None):
        """Trains for up to max_iter epochs (see the module doc for the stopping rule).
        sample_weight: one non-negative weight per row (see the module doc)."""
        with self._unchanged_on_failure():
            warm = self.warm_start and hasattr(self, "model_")
            X, y, multilabel = self._xy(X, y, reset=not warm)
            sample_weight = _sample_weight(sample_weight, X)
            classes = np.arange(y.shape[1]) if multilabel else np.unique(y)
            if warm and (not np.array_equal(classes, self.classes_) or multilabel != self._multilabel):
                raise ValueError(f"warm_start can only be used where `y` has the same classes as in the previous call "
                                 f"to fit. Previously got {self.classes_}, `y` has {classes}")
            self._set_classes(classes, multilabel)
            return self._train(X, self._encode(y), y, incremental=False, sample_weight=sample_weight)

    @available_if(_stochastic_solver)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y). The first call needs `classes`, every label that can appear (for
        multilabel y, one per column)."""
        with self._unchanged_on_failure():
            first = not hasattr(self, "model_")
            if first and classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            X, y, multilabel = self._xy(X, y, reset=first)
            sample_weight = _sample_weight(sample_weight, X)
            if first:
                self._set_classes(classes, multilabel, y.shape[1] if multilabel else None)
            else:
                if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                    raise ValueError(f"`classes={np.unique(classes).tolist()}` is not the same as on the first call to "
                                     f"partial_fit ({self.classes_.tolist()})")
                if multilabel != self._multilabel or (multilabel and y.shape[1] != self.n_outputs_):
                    raise ValueError("y must have the same kind of targets (labels or a multilabel matrix with as many "
                                     "columns) as on the first call to partial_fit")
            return self._train(X, self._encode(y), y, incremental=True, sample_weight=sample_weight)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in classes_ order (for
        multilabel targets, each label's probability on its own: rows need not sum to 1)."""
        network = self._network()
        X = self._features(X, reset=False)
        p = np.asarray(network.predict(X), dtype=self._dtype)
        if self.n_outputs_ == 1 and not self._multilabel:
            p = np.hstack([1.0 - p, p])
        return p

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        network = self._network()
        X = self._features(X, reset=False)
        return self._decode(np.asarray(network.predict(X)))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor with scikit-learn's MLPRegressor interface (see module doc).

    loss: "squared_error" (linear output) or "poisson" (exponential output, the Poisson deviance
    up to a constant: mean(p - y log p); y must be >= 0).
    A 1-D y gives 1-D predictions; a 2-D y (n_samples, n_targets) multi-output predictions.
    Attributes after fit: n_features_in_, loss_, loss_curve_, n_iter_, t_, best_loss_,
    validation_scores_ (R^2), best_validation_score_, coefs_, intercepts_, n_layers_, n_outputs_,
    out_activation_ ("identity" or "exp"), model_.
    """

    _is_classifier = False
    _multilabel = False

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=1e-4, dropout=0.0, batch_size="auto", learning_rate="constant", learning_rate_init=1e-3,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, device="auto"):
        self.loss = loss
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, dropout=dropout,
                         batch_size=batch_size, learning_rate=learning_rate, learning_rate_init=learning_rate_init,
                         power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
                         verbose=verbose, warm_start=warm_start, momentum=momentum,
                         nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         n_iter_no_change=n_iter_no_change, max_fun=max_fun, device=device)

    def _check_params(self):
        if self.loss not in ("squared_error", "poisson"):
            raise ValueError(f"loss must be 'squared_error' or 'poisson', got {self.loss!r}")
        return super()._check_params()

    def _output(self, n_out):
        if self.loss == "poisson":
            return "exponential", "poisson", None
        return "linear", "mse", None

    def _loss_factor(self):
        # fastmlp's mse is mean((y - p)^2), scikit-learn's squared loss half that; fastmlp's Poisson
        # loss is a mean over the outputs, scikit-learn's their sum.
        return 2.0 if self.loss == "squared_error" else 1.0 / self.n_outputs_

    def _gradient_factor(self):
        # scikit-learn's squared-error gradient is (p - y) / n per output: the gradient of the sum
        # over the outputs, while it reports their mean.
        return 2.0 / self.n_outputs_ if self.loss == "squared_error" else self._loss_factor()

    def _xy(self, X, y, reset):
        X, y = _validate_data(self, X, y, reset=reset, dtype=_FLOATS, order="C", multi_output=True,
                              y_numeric=True, accept_sparse=_SPARSE)
        X = _dense(X)
        self._y_1d = y.ndim == 1
        y2 = np.ascontiguousarray(y.reshape(len(y), -1), dtype=X.dtype)
        if not np.isfinite(y2).all():
            raise ValueError(f"y contains values too large for {X.dtype}")
        if self.loss == "poisson" and (y2 < 0).any():
            raise ValueError("loss='poisson' needs non-negative y (counts or rates)")
        return X, y2

    def _score_outputs(self, out, y, sample_weight):
        from sklearn.metrics import r2_score

        return r2_score(y, out.reshape(y.shape), sample_weight=sample_weight)

    def _set_outputs(self, n):
        self.n_outputs_ = n
        self.out_activation_ = "exp" if self.loss == "poisson" else "identity"

    def fit(self, X, y, sample_weight=None):
        """Trains for up to max_iter epochs (see the module doc for the stopping rule).
        sample_weight: one non-negative weight per row (see the module doc)."""
        with self._unchanged_on_failure():
            self._check_params()
            warm = self.warm_start and hasattr(self, "model_")
            X, y = self._xy(X, y, reset=not warm)
            sample_weight = _sample_weight(sample_weight, X)
            if warm and (y.shape[1] != self.n_outputs_ or self.out_activation_ != ("exp" if self.loss == "poisson"
                                                                                    else "identity")):
                raise ValueError(f"warm_start needs y with {self.n_outputs_} columns and the same loss as the previous fit")
            if not warm and hasattr(self, "model_"):
                del self.model_
            self._set_outputs(y.shape[1])
            return self._train(X, y, y, incremental=False, sample_weight=sample_weight)

    @available_if(_stochastic_solver)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y); the first call builds the network."""
        with self._unchanged_on_failure():
            self._check_params()
            first = not hasattr(self, "model_")
            X, y = self._xy(X, y, reset=first)
            sample_weight = _sample_weight(sample_weight, X)
            if first:
                self._set_outputs(y.shape[1])
            elif y.shape[1] != self.n_outputs_:
                raise ValueError(f"y has {y.shape[1]} columns but the model was fitted with {self.n_outputs_}")
            return self._train(X, y, y, incremental=True, sample_weight=sample_weight)

    def predict(self, X):
        network = self._network()
        X = self._features(X, reset=False)
        p = np.asarray(network.predict(X), dtype=self._dtype)
        return p.ravel() if self._y_1d else p

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


__all__ = ["MLPClassifier", "MLPRegressor"]
