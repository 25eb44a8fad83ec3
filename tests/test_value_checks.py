"""Values that were never checked, or checked wrongly (issue 9, items 4 and 5).

Every bad value raises ValueError/TypeError naming it and leaves the model as it was; NumPy
scalars are accepted wherever Python numbers are; a learning rate of 0 is valid (PyTorch and
Keras accept it), a negative one is not; fm.gradcheck samples big models by default.
"""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import initializers as I
from fastmlp import optimizers as O
from fastmlp import schedules as S
from fastmlp._validation import as_targets, non_negative_int, positive_int

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 4))
Y = np.arange(20) % 3


def make(opt=None, out="softmax", k=3, loss="sparse_categorical_crossentropy", seed=0):
    m = fm.Sequential([fm.Dense(6, activation="tanh", input_dim=4), fm.Dense(k, activation=out)], seed=seed)
    m.compile(optimizer=opt if opt is not None else O.SGD(lr=0.1), loss=loss, device="cpu")
    return m


def snapshot(m):
    return [w.copy() for w in m.get_weights()], m._engine.get_state().copy(), m._engine.step, m.get_learning_rate()


def assert_unchanged(m, snap):
    now = snapshot(m)
    assert all(np.array_equal(a, b) for a, b in zip(now[0], snap[0]))
    assert np.array_equal(now[1], snap[1]) and now[2:] == snap[2:]


# ------------------------------------------------------------ from_config validates every field

def test_schedule_from_config_rejects_what_the_constructors_reject():
    good = S.CosineDecay(0.1, decay_steps=10, min_lr=0.01).get_config()
    bad_cases = [
        (dict(good, min_lr=-0.1), "min_lr"),  # the case: trained the loss from 2.37 to 550
        (dict(good, min_lr=0.5), "min_lr"),  # above initial_lr
        (dict(good, initial_lr=-1.0), "initial_lr"),
        (dict(good, initial_lr="0.1"), "initial_lr"),  # wrong type
        (dict(good, initial_lr=float("nan")), "initial_lr"),
        (dict(good, warmup_steps=-1), "warmup_steps"),
        (dict(good, warmup_steps=2.5), "warmup_steps"),
        (dict(good, decay_steps=0), "decay_steps"),
        (dict(good, rate=3.0), "rate"),  # cosine does not use rate: it must hold the default 1.0
        (dict(good, kind="cosinus"), "kind"),
        (dict(good, kind=None), "kind"),
        (dict(good, extra=1), "extra"),
        ({k: v for k, v in good.items() if k != "initial_lr"}, "initial_lr"),
        (dict(S.StepDecay(0.1, step_size=3).get_config(), decay_steps=0), "decay_steps"),
        (dict(S.StepDecay(0.1, step_size=3).get_config(), rate=-0.5), "rate"),
        (dict(S.ExponentialDecay(0.1, 3, 0.9).get_config(), staircase="no"), "staircase"),
        (dict(S.InverseTimeDecay(0.1, 0.5).get_config(), rate=float("inf")), "rate"),
        (dict(S.Constant(0.1).get_config(), min_lr=-0.1), "min_lr"),
    ]
    for cfg, word in bad_cases:
        with pytest.raises(ValueError, match=word):
            S.from_config(cfg)
    with pytest.raises(ValueError, match="dict"):
        S.from_config(["cosine"])


def test_schedule_from_config_round_trips():
    for s in (S.Constant(0.1, warmup_steps=2), S.StepDecay(0.1, 3, 0.5), S.ExponentialDecay(0.1, 3, 0.9, True),
              S.InverseTimeDecay(0.1, 0.5, 2), S.CosineDecay(0.1, 10, 0.01, 3), S.Constant(0.0)):
        back = S.from_config(s.get_config())
        assert type(back) is type(s) and back.get_config() == s.get_config()
        assert [back(t) for t in range(12)] == [s(t) for t in range(12)]


def test_optimizer_from_config_rejects_what_the_constructors_reject():
    good = O.Adam(lr=S.CosineDecay(0.1, decay_steps=10)).get_config()
    bad_cases = [
        (dict(good, schedule=dict(good["schedule"], min_lr=-0.1)), "min_lr"),
        (dict(good, schedule="constant"), "schedule"),
        ({k: v for k, v in good.items() if k != "schedule"}, "schedule"),
        (dict(good, eps=-1.0), "eps"),
        (dict(good, eps="1e-8"), "eps"),
        (dict(good, betas=[0.9]), "betas"),
        (dict(good, betas=[0.9, 1.5]), "beta2"),
        (dict(good, amsgrad="yes"), "amsgrad"),
        (dict(good, weight_decay=-1.0), "weight_decay"),
        (dict(good, momentum=0.9), "momentum"),  # not an Adam field
        (dict(good, kind="adamm"), "kind"),
        (dict(good, kind=["adam"]), "kind"),
        (dict(O.SGD().get_config(), nesterov=True), "Nesterov"),
        (dict(O.RMSprop().get_config(), alpha=2.0), "alpha"),
    ]
    for cfg, word in bad_cases:
        with pytest.raises(ValueError, match=word):
            O.from_config(cfg)
    with pytest.raises(ValueError, match="dict"):
        O.from_config(None)


def test_optimizer_from_config_round_trips():
    for opt in (O.SGD(0.1, momentum=0.9, nesterov=True), O.Adagrad(0.1, lr_decay=0.1), O.RMSprop(centered=True),
                O.Adadelta(rho=0.8), O.Adam(lr=S.StepDecay(0.1, 3)), O.AdamW(amsgrad=True), O.SGD(lr=0.0),
                O.NAdam(momentum_decay=0.01, decoupled_weight_decay=True, weight_decay=0.1),
                O.RAdam(betas=(0.8, 0.99)), O.LAMB(weight_decay=0.01, clipnorm=1.0), O.SGD(clipvalue=0.5),
                O.Adam(global_clipnorm=2.0)):
        back = O.from_config(opt.get_config())
        assert type(back) is type(opt) and back.get_config() == opt.get_config()


def test_loss_and_initializer_from_config_validate():
    with pytest.raises(ValueError, match="name"):
        fm.losses.from_config({"name": "hinge2"})
    with pytest.raises(ValueError, match="from_logits"):
        fm.losses.from_config({"name": "binary_crossentropy", "from_logits": "yes"})
    with pytest.raises(ValueError, match="stddev"):
        I.from_config({"kind": "random_normal", "a": 0.0, "b": -1.0})
    with pytest.raises(ValueError, match="'a'"):
        I.from_config({"kind": "he_normal", "a": 3.0, "b": 0.0})
    with pytest.raises(ValueError, match="kind"):
        I.from_config({"kind": "orthogonal"})
    assert I.from_config(I.RandomUniform(-0.2, 0.3).get_config()).spec() == ("random_uniform", -0.2, 0.3)


# --------------------------------------------------------------------------- initializers

def test_initializers_need_finite_parameters():
    for make_bad, word in [(lambda: I.RandomNormal(0.0, float("inf")), "stddev"),
                           (lambda: I.RandomNormal(float("nan"), 1.0), "mean"),
                           (lambda: I.RandomNormal(1e308, 1e308), "overflow"),
                           (lambda: I.RandomNormal("0", 1.0), "mean"),
                           (lambda: I.RandomUniform(-1e308, 1e308), "width"),
                           (lambda: I.RandomUniform(0.0, float("inf")), "maxval"),
                           (lambda: I.RandomUniform(None, 1.0), "minval")]:
        with pytest.raises(ValueError, match=word):
            make_bad()


def test_check_dtype_on_every_initializer():
    for cls in I._BY_NAME.values():  # the named ones included
        init = cls()
        init.check_dtype(np.float32)
        init.check_dtype(np.dtype("float64"))
        with pytest.raises(ValueError, match="dtype"):
            init.check_dtype(np.int32)
    # finite in float64 but not in float32: mean 1e39, or |min|/|max| beyond 3.4e38
    for init in (I.RandomNormal(mean=1e39, stddev=1.0), I.RandomNormal(0.0, 1e38), I.RandomUniform(-4e38, 0.0),
                 I.RandomUniform(0.0, 1e39)):
        init.check_dtype(np.float64)
        with pytest.raises(ValueError, match="float32"):
            init.check_dtype(np.float32)
    I.RandomNormal(mean=1e37, stddev=1.0).check_dtype(np.float32)  # large but finite


# ------------------------------------------------------------------------ target ranges

@pytest.mark.parametrize("loss", ["binary_crossentropy", "categorical_crossentropy"])
def test_cross_entropy_targets_must_be_probabilities(loss):
    obj = fm.losses.get(loss)
    with pytest.raises(ValueError, match=r"\[0, 9\].*\[0, 1\]"):
        as_targets(np.arange(20).reshape(10, 2) % 10, "y", 10, 2, False, np.float32, loss=obj)
    with pytest.raises(ValueError, match=r"-0.5"):
        as_targets(np.full((10, 2), -0.5), "y", 10, 2, False, np.float32, loss=obj)
    # soft labels inside [0, 1] are fine, and rows need not sum to 1 (as in Keras)
    soft = np.full((10, 2), 0.3)
    assert np.array_equal(as_targets(soft, "y", 10, 2, False, np.float32, loss=obj), soft.astype(np.float32))
    # mse has no range
    as_targets(np.full((10, 2), 7.0), "y", 10, 2, False, np.float32, loss=fm.losses.get("mse"))


def test_bce_with_class_labels_is_rejected_by_fit():
    """End to end (passes once models._y passes loss= to as_targets)."""
    m = make(out="sigmoid", k=1, loss="binary_crossentropy")
    snap = snapshot(m)
    with pytest.raises(ValueError, match=r"binary_crossentropy targets must be in \[0, 1\]"):
        m.fit(X, np.arange(20) % 10, epochs=1, verbose=0)
    assert_unchanged(m, snap)


def test_hinge_class_ids_are_checked():
    m = make(out="linear", loss="multiclass_hinge")
    snap = snapshot(m)
    with pytest.raises(ValueError, match="labels"):
        m.fit(X, np.arange(20) % 5, epochs=1, verbose=0)
    assert_unchanged(m, snap)


# ------------------------------------------------------------ integers beyond the C++ range

def test_integers_beyond_native_range():
    m = make()
    snap = snapshot(m)
    for call in (lambda: m.fit(X, Y, batch_size=2 ** 31, epochs=1, verbose=0),
                 lambda: m.evaluate(X, Y, batch_size=2 ** 31),
                 lambda: m.predict(X, batch_size=2 ** 63)):
        with pytest.raises(ValueError, match="batch_size"):
            call()
    assert_unchanged(m, snap)
    m.fit(X, Y, batch_size=2 ** 31 - 1, epochs=1, verbose=0)  # the bound itself is fine
    snap = snapshot(m)  # after that fit: what the failing calls below must leave alone
    with pytest.raises(ValueError, match="units"):
        fm.Dense(2 ** 31)
    with pytest.raises(ValueError, match="input_dim"):
        fm.Dense(3, input_dim=2 ** 31)
    with pytest.raises(ValueError, match="seed"):
        fm.Sequential([fm.Dense(3, input_dim=4)], seed=2 ** 64)
    top = fm.Sequential([fm.Dense(3, input_dim=4)], seed=2 ** 64 - 1)
    top.compile(loss="mse", device="cpu")
    with pytest.raises(ValueError, match="lr must be a finite number"):
        O.SGD(lr=10 ** 400)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        m.set_learning_rate(10 ** 400)
    with pytest.raises(ValueError, match="l2"):
        fm.regularizers.L2(10 ** 400)
    with pytest.raises(ValueError, match="step"):
        S.Constant(0.1)(2 ** 63)
    with pytest.raises(ValueError, match="warmup_steps"):
        S.Constant(0.1, warmup_steps=2 ** 63)
    assert_unchanged(m, snap)
    with pytest.raises(ValueError, match="at most"):
        positive_int(2 ** 31, "n")
    with pytest.raises(ValueError, match="at most"):
        non_negative_int(2 ** 63, "n")


# ------------------------------------------------------------------------- NumPy scalars

def test_numpy_scalars_are_numbers():
    opt = O.Adam(lr=np.float32(1e-3), betas=(np.float32(0.9), np.float64(0.999)), eps=np.float32(1e-7))
    assert opt.lr == pytest.approx(1e-3)
    O.SGD(lr=np.float16(0.01), momentum=np.int64(0), nesterov=np.bool_(False))
    S.CosineDecay(np.float32(0.1), np.int32(10), min_lr=np.float32(0.0), warmup_steps=np.int64(2))
    fm.regularizers.L2(np.float32(1e-4))
    I.RandomNormal(np.float32(0.0), np.float32(0.1))
    fm.callbacks.ReduceLROnPlateau(factor=np.float32(0.5), min_lr=np.float32(1e-6))
    m = make()
    m.set_learning_rate(np.float32(0.05))
    assert m.get_learning_rate() == pytest.approx(0.05)
    h = m.fit(X, Y, epochs=1, verbose=0, validation_split=np.float32(0.25))
    assert "val_loss" in h.history
    for bad in (lambda: O.SGD(lr=True), lambda: fm.regularizers.L2(True),
                lambda: m.fit(X, Y, epochs=1, verbose=0, validation_split=True)):
        with pytest.raises(ValueError):
            bad()


# ----------------------------------------------------------------- a learning rate of 0

def test_learning_rate_zero_is_valid():
    for opt in (O.SGD(lr=0), O.Adam(lr=0.0), O.AdamW(lr=np.float32(0)), O.Adam(lr=S.CosineDecay(0.0, 10)),
                O.SGD(lr=S.Constant(0.0, warmup_steps=3))):
        m = make(opt)
        before = m.get_weights()
        m.fit(X, Y, epochs=2, verbose=0)
        assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))  # lr 0 moves nothing
    m = make()
    m.set_learning_rate(0)
    assert m.get_learning_rate() == 0.0
    seen = []
    m = make()
    m.fit(X, Y, epochs=2, verbose=0,
          callbacks=[fm.callbacks.LearningRateScheduler(lambda epoch: 0.0),
                     fm.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(m.get_learning_rate()))])
    assert seen == [0.0, 0.0]


def test_negative_learning_rate_is_still_an_error():
    for bad, word in [(lambda: O.SGD(lr=-0.1), "lr"), (lambda: S.Constant(-0.1), "initial_lr"),
                      (lambda: S.CosineDecay(0.1, 10, min_lr=-0.01), "min_lr"),
                      (lambda: fm.callbacks.ReduceLROnPlateau(min_lr=-1e-3), "min_lr")]:
        with pytest.raises(ValueError, match=word):
            bad()
    m = make()
    snap = snapshot(m)
    with pytest.raises(ValueError, match="lr"):
        m.set_learning_rate(-0.1)
    with pytest.raises(ValueError, match="finite number >= 0"):
        m.fit(X, Y, epochs=1, verbose=0, callbacks=[fm.callbacks.LearningRateScheduler(lambda e, lr: -1.0)])
    assert_unchanged(m, snap)


# ------------------------------------------------------------------------------ gradcheck

def test_gradcheck_checks_small_models_whole_and_samples_big_ones():
    m = make()
    worst, d = fm.gradcheck(m, X, Y, return_details=True)
    assert d["n_checked"] == d["n_params"] == m.count_params() == d["index"].size and worst < 1e-6
    # a sample smaller than the model covers every kernel and every bias
    shapes = m._layer_shapes()
    ends = np.cumsum([int(np.prod(s)) for s in shapes])
    _, d = fm.gradcheck(m, X, Y, max_params=8, return_details=True)
    assert d["n_checked"] == 8 and d["n_params"] == m.count_params()
    assert set(np.searchsorted(ends, d["index"], side="right")) == set(range(len(shapes)))

    big = fm.Sequential([fm.Dense(256, activation="tanh", input_dim=784), fm.Dense(10, activation="softmax")],
                        seed=0)
    big.compile(loss="sparse_categorical_crossentropy", device="cpu")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(32, 784)), rng.integers(0, 10, 32)
    worst, d = fm.gradcheck(big, x, y, return_details=True)  # ~1-3 s; all 203,530 took more than 10 minutes
    # bounded work, asserted by count rather than by a wall-clock limit that a busy machine could break
    assert d["n_params"] == 784 * 256 + 256 + 2560 + 10 and d["n_checked"] == 1000
    blocks = np.searchsorted(np.cumsum([784 * 256, 256, 2560, 10]), d["index"], side="right")
    assert np.bincount(blocks).tolist() == [367, 256, 367, 10]  # every kernel and bias, small ones whole
    assert worst < 1e-6


def test_gradcheck_validates_its_arguments():
    m = make()
    snap = snapshot(m)
    with pytest.raises(TypeError, match="Sequential"):
        fm.gradcheck("model", X, Y)
    for kwargs, word in [(dict(max_params=0), "max_params"), (dict(max_params=2.5), "max_params"),
                         (dict(eps=-1e-5), "eps"), (dict(eps="small"), "eps"), (dict(floor=0.0), "floor"),
                         (dict(dtype="int32"), "dtype"), (dict(dtype="nonsense"), "dtype"), (dict(seed=-1), "seed"),
                         (dict(return_details="yes"), "return_details")]:
        with pytest.raises(ValueError, match=word):
            fm.gradcheck(m, X, Y, **kwargs)
    with pytest.raises(TypeError, match="host arrays"):
        fm.gradcheck(m, m.upload(X, Y), None)
    with pytest.raises(ValueError, match="different lengths"):
        fm.gradcheck(m, X, Y[:5])
    with pytest.raises(RuntimeError, match="compile"):
        fm.gradcheck(fm.Sequential([fm.Dense(3, input_dim=4)]), X, Y)
    assert_unchanged(m, snap)


# ------------------------------------------------------------------ Optimizer.copy (item 4)

def test_optimizer_copy_is_deep_and_independent():
    for opt in (O.Adam(lr=S.CosineDecay(0.1, 10, 0.01), betas=(0.8, 0.99)), O.SGD(0.1, momentum=0.9)):
        twin = opt.copy()
        assert type(twin) is type(opt) and twin.get_config() == opt.get_config()
        assert twin is not opt and twin.schedule is not opt.schedule
        twin.lr = 0.5
        assert opt.lr == 0.1 and twin.lr == 0.5


def test_two_models_compiled_with_one_optimizer_do_not_share_it():
    """End to end (passes once compile compiles a copy() of the optimizer)."""
    opt = O.Adam(lr=1e-2)
    a, b = make(opt), make(opt)
    a.set_learning_rate(0.5)
    assert b.get_learning_rate() == pytest.approx(1e-2) and opt.lr == pytest.approx(1e-2)
