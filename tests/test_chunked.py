"""fit, evaluate and predict over data sources (generators, Keras-style Sequences, DataLoader-like
re-iterables) instead of arrays: each chunk uploaded and run natively, the results those of the
same rows as one array."""
import numpy as np
import pytest

import fastmlp as fm

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 3))
Y = RNG.integers(0, 3, 60)


def model(seed=0):
    m = fm.Sequential([fm.Dense(5, "tanh", input_dim=3), fm.Dense(3, "softmax")], seed=seed)
    m.compile(fm.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu",
              dtype="float64")
    return m


def gen(x=X, y=Y, size=15, weights=None):
    for i in range(0, len(x), size):
        yield (x[i:i + size], y[i:i + size]) if weights is None else (x[i:i + size], y[i:i + size],
                                                                       weights[i:i + size])


class Seq:
    """Keras's Sequence protocol: __len__, __getitem__, on_epoch_end."""

    def __init__(self, size=20):
        self.size, self.epochs_ended = size, 0

    def __len__(self):
        return -(-len(X) // self.size)

    def __getitem__(self, i):
        return X[i * self.size:(i + 1) * self.size], Y[i * self.size:(i + 1) * self.size]

    def on_epoch_end(self):
        self.epochs_ended += 1


class Loader:
    """A re-iterable like torch's DataLoader: a fresh pass per iter()."""

    def __iter__(self):
        return gen(size=12)

    def __len__(self):
        return 5


@pytest.mark.parametrize("source", [lambda: gen(), lambda: Seq(), lambda: Loader()], ids=["generator", "sequence",
                                                                                          "loader"])
def test_evaluate_and_predict_equal_the_array_results(source):
    m = model()
    want = m.evaluate(X, Y)
    got = m.evaluate(source())
    assert got["accuracy"] == want["accuracy"] and got["loss"] == pytest.approx(want["loss"], rel=1e-14)
    np.testing.assert_array_equal(m.predict(source()), m.predict(X))


def test_predict_takes_x_only_chunks_and_steps():
    m = model()
    xs = (X[i:i + 10] for i in range(0, 60, 10))
    np.testing.assert_array_equal(m.predict(xs, steps=3), m.predict(X[:30]))


def test_weighted_chunks_and_errors():
    m = model()
    w = RNG.uniform(0, 2, 60)
    assert m.evaluate(gen(weights=w))["loss"] == pytest.approx(m.evaluate(X, Y, sample_weight=w)["loss"], rel=1e-13)
    with pytest.raises(ValueError, match="has no targets"):
        m.evaluate(iter([X[:5]]))
    with pytest.raises(ValueError, match="leave y and sample_weight out"):
        m.evaluate(gen(), Y)
    with pytest.raises(ValueError, match="ran out after 4 of steps=9"):
        m.evaluate(gen(), steps=9)
    with pytest.raises(ValueError, match="steps goes with a data source"):
        m.evaluate(X, Y, steps=2)
    with pytest.raises(ValueError, match="yielded no rows"):
        m.predict(iter([]))


def test_fit_on_a_sequence_equals_fit_on_its_chunks_in_order():
    # One step per chunk (batch_size None), no shuffling: the same steps as train_on_batch per chunk.
    a, b = model(), model()
    seq = Seq(size=20)
    h = a.fit(seq, epochs=2, shuffle=False, verbose=0)
    assert seq.epochs_ended == 2 and len(h.history["loss"]) == 2
    for _ in range(2):
        for i in range(len(seq)):
            b.train_on_batch(*seq[i])
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14)


def test_fit_on_a_generator_with_steps_per_epoch_and_validation_source():
    def forever():
        while True:
            yield from gen(size=10)

    m = model()
    h = m.fit(forever(), steps_per_epoch=6, epochs=3, batch_size=5, verbose=0,
              validation_data=Seq(size=30), validation_steps=2)
    assert len(h.history["val_loss"]) == 3 and h.history["loss"][-1] < h.history["loss"][0]
    # a plain iterator without steps_per_epoch is used up by the first epoch
    with pytest.raises(ValueError, match="used up by the previous epoch"):
        model().fit(gen(), epochs=2, verbose=0)
    with pytest.raises(ValueError, match="leave y, sample_weight"):
        model().fit(gen(), Y, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch goes with a data source"):
        model().fit(X, Y, steps_per_epoch=3, verbose=0)
    with pytest.raises(ValueError, match="has no targets"):
        model().fit(iter([X]), verbose=0)


def test_fit_on_a_loader_matches_the_array_fit_when_it_yields_one_chunk():
    class One:
        def __iter__(self):
            return iter([(X, Y)])

    a, b = model(), model()
    a.fit(One(), epochs=3, batch_size=16, verbose=0)
    b.fit(X, Y, epochs=3, batch_size=16, verbose=0, shuffle=True)
    # shuffling differs (chunk seeds), so compare the quality, not the bits
    assert abs(a.evaluate(X, Y)["loss"] - b.evaluate(X, Y)["loss"]) < 0.05


def test_a_real_torch_dataloader():
    # Skipped without torch (CI has none): its batches are tensors, (x, y) for fit and evaluate,
    # 1-tuples (x,) for predict.
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    m = model()
    loader = DataLoader(TensorDataset(torch.tensor(X), torch.tensor(Y)), batch_size=16, shuffle=True)
    h = m.fit(loader, epochs=2, verbose=0)
    assert len(h.history["loss"]) == 2
    whole = DataLoader(TensorDataset(torch.tensor(X), torch.tensor(Y)), batch_size=25)
    assert m.evaluate(whole) == pytest.approx(m.evaluate(X, Y), rel=1e-12)
    np.testing.assert_array_equal(m.predict(DataLoader(TensorDataset(torch.tensor(X)), batch_size=7)), m.predict(X))
