"""fastmlp.plot: figures render to PNG files of the expected size with real content."""
import numpy as np
import pytest

import fastmlp as fm

pytest.importorskip("matplotlib")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def check_png(path, fig, dpi=100):
    img = mpimg.imread(path)
    w, h = fig.get_size_inches()
    assert img.shape[:2] == (round(h * dpi), round(w * dpi))
    rgb = img[..., :3]
    assert rgb.std() > 0.01 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20  # not a flat image
    return img


def blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[-2, -2], [2, -1], [0, 2.5]])
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(0, 0.6, (n, 2))).astype(np.float32), y


@pytest.fixture(scope="module")
def trained():
    x, y = blobs()
    model = fm.Sequential([fm.Dense(16, "relu", input_dim=2), fm.Dense(3, "softmax")], seed=0)
    model.compile(fm.optimizers.Adam(lr=0.02), "sparse_categorical_crossentropy", metrics=["accuracy"],
                  device="cpu")
    hist = model.fit(x, y, epochs=15, batch_size=16, verbose=0, validation_split=0.25)
    return model, hist, x, y


def test_history_plot(tmp_path, trained):
    model, hist, _, _ = trained
    path = tmp_path / "hist.png"
    fig = fm.plot.history(hist, path=path)
    check_png(path, fig)
    assert len(fig.axes) == 2
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["train loss", "validation loss"]
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), hist.history["accuracy"])
    # History.plot and the dict / model forms, a chosen metric, a given Axes
    fig2 = hist.plot(metrics="loss")
    assert len(fig2.axes) == 1
    _, ax = plt.subplots()
    assert fm.plot.history(model, ax=ax) is ax.figure and len(ax.lines) == 4
    assert len(fm.plot.history(hist.history, metrics=["accuracy"]).axes) == 1


def test_history_errors(trained):
    _, hist, _, _ = trained
    with pytest.raises(ValueError, match="no 'mae'"):
        fm.plot.history(hist, metrics=["mae"])
    with pytest.raises(ValueError, match="non-empty"):
        fm.plot.history({})
    _, axes = plt.subplots(1, 3)
    with pytest.raises(ValueError, match="3 axes for 2 metrics"):
        fm.plot.history(hist, ax=axes)


def test_decision_boundary(tmp_path, trained):
    model, _, x, y = trained
    path = tmp_path / "boundary.png"
    fig = fm.plot.decision_boundary(model, x, y, path=path, resolution=60)
    img = check_png(path, fig)
    assert img.shape[:2] == (500, 600)
    assert len(fig.axes[0].collections) >= 2  # filled regions + the samples
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        fm.plot.decision_boundary(model, np.zeros((4, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="resolution"):
        fm.plot.decision_boundary(model, x, y, resolution=1)
    with pytest.raises(ValueError, match="samples"):
        fm.plot.decision_boundary(model, x, y[:-1])


def test_decision_boundary_binary_sigmoid(tmp_path):
    x, y = blobs()
    y = (y == 0).astype(np.float32)
    model = fm.Sequential([fm.Dense(8, "tanh", input_dim=2), fm.Dense(1, "sigmoid")], seed=1)
    model.compile(fm.optimizers.Adam(lr=0.05), "binary_crossentropy", device="cpu")
    model.fit(x, y, epochs=5, batch_size=16, verbose=0)
    fig = fm.plot.decision_boundary(model, x, y, path=tmp_path / "b.png", resolution=40)
    check_png(tmp_path / "b.png", fig)


def test_confusion_matrix(tmp_path, trained):
    from fastmlp.plot import _confusion_counts

    model, _, x, y = trained
    path = tmp_path / "cm.png"
    fig = fm.plot.confusion_matrix(y, model, x=x, path=path, labels=["a", "b", "c"])
    check_png(path, fig)
    ax = fig.axes[0]
    cells = [int(t.get_text()) for t in ax.texts]
    pred = model.predict(x).argmax(axis=1)
    assert sum(cells) == len(y) and cells == list(_confusion_counts(y, pred).ravel())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    np.testing.assert_array_equal(_confusion_counts([0, 1, 1, 2], [0, 1, 2, 2]), [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    fig2 = fm.plot.confusion_matrix(y, np.eye(3)[y], normalize=True)
    assert [t.get_text() for t in fig2.axes[0].texts][0] == "1.00"
    with pytest.raises(ValueError, match="x="):
        fm.plot.confusion_matrix(y, model)
    with pytest.raises(ValueError, match="samples"):
        fm.plot.confusion_matrix(y, y[:-1])
    with pytest.raises(ValueError, match="does not fit"):
        fm.plot.confusion_matrix([0, 3], [0, 1], labels=["x", "y"])
