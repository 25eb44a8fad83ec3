"""The `fastmlp` command line: train, evaluate, predict, demo, info.

    fastmlp train --data digits --hidden 128 --epochs 20 --save model.fm
    fastmlp train --data mnist --hidden 512,512 --dropout 0.2 --batch-norm
    fastmlp train --data mnist --data-dir ~/data/mnist --epochs 5
    fastmlp train --data /path/to/mnist          # a folder holding the four IDX files
    fastmlp evaluate --model model.fm --data digits
    fastmlp predict --model model.fm --data x.npz --out preds.npy
    fastmlp demo
    fastmlp info

--data is 'mnist' (the IDX files in --data-dir, else $FASTMLP_DATA, else ~/.cache/fastmlp/mnist), 'digits',
a folder holding MNIST's four IDX files, or a .npz file with x_train, y_train (and optionally x_test, y_test).
Errors are reported as one line on stderr with exit status 2 (set FASTMLP_DEBUG=1 for a traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def _optimizer_names():
    from .optimizers import _PER_STEP

    return _PER_STEP


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------------------- data
def _split_digits(seed):
    from .datasets import load_digits, train_test_split

    x, y = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, seed=seed, stratify=True)
    return x_tr, y_tr, x_te, y_te


_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")
_DATA_CHOICES = "'mnist', 'digits', a folder of MNIST IDX files or a .npz file"


def _mnist_folder(folder: Path) -> Path:
    """folder, or folder/mnist when only that holds the files (as $FASTMLP_DATA is read)."""
    from .datasets import _find

    sub = folder / "mnist"
    if _find(folder, _IDX_STEMS[0]) is None and sub.is_dir() and _find(sub, _IDX_STEMS[0]) is not None:
        return sub
    return folder


def _load_idx_folder(folder: Path, download: bool):
    """MNIST's train and test pairs from the IDX files in folder (load_mnist's reading and checks)."""
    from .datasets import _find, load_mnist

    folder = _mnist_folder(folder)
    if not download:
        missing = [stem for stem in _IDX_STEMS if _find(folder, stem) is None]
        if len(missing) == len(_IDX_STEMS):
            raise CLIError(f"{folder}: no MNIST IDX files (expected {', '.join(_IDX_STEMS)}, each optionally "
                           "gzipped as .gz)")
        if missing:
            raise CLIError(f"{folder}: missing MNIST IDX file{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                           "(or .gz)")
    (x_tr, y_tr), (x_te, y_te) = load_mnist(folder, download=download)  # malformed files: ValueError
    return x_tr, y_tr, x_te, y_te


def _load_mnist(data_dir):
    """--data mnist: --data-dir when given (which must exist), else load_mnist's own lookup
    ($FASTMLP_DATA, then ~/.cache/fastmlp/mnist); missing files are downloaded there."""
    if data_dir is None:
        from .datasets import load_mnist

        (x_tr, y_tr), (x_te, y_te) = load_mnist()
        return x_tr, y_tr, x_te, y_te
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise CLIError(f"--data-dir {data_dir}: no such folder")
    return _load_idx_folder(folder, download=True)


def _load_data(spec: str, seed: int = 0, data_dir=None):
    """(x_train, y_train, x_test, y_test); the test pair may be None."""
    if data_dir is not None and spec != "mnist":
        raise CLIError(f"--data-dir is where --data mnist looks for its IDX files; it does not apply to "
                       f"--data {spec}")
    if spec == "mnist":
        return _load_mnist(data_dir)
    if spec == "digits":
        return _split_digits(seed)
    if os.path.isdir(os.path.expanduser(spec)):  # also a quoted ~/data/mnist
        return _load_idx_folder(Path(spec).expanduser(), download=False)
    arrays = _load_arrays(spec)
    if "x_train" not in arrays or "y_train" not in arrays:
        raise CLIError(f"{spec}: needs arrays x_train and y_train (has: {', '.join(arrays) or 'none'})")
    x_te, y_te = arrays.get("x_test"), arrays.get("y_test")
    if (x_te is None) != (y_te is None):
        raise CLIError(f"{spec}: x_test and y_test must be given together")
    return arrays["x_train"], arrays["y_train"], x_te, y_te


def _load_arrays(path: str) -> dict:
    if not os.path.exists(path):
        raise CLIError(f"data file not found: {path} (use {_DATA_CHOICES})")
    name = os.path.basename(path)
    if any(name in (stem, stem + ".gz") for stem in _IDX_STEMS):
        raise CLIError(f"{path} is one MNIST IDX file: pass the folder that holds all four "
                       f"(--data {os.path.dirname(path) or '.'})")
    try:
        if path.endswith(".npy"):
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise CLIError(f"{path}: expected a .npz archive of named arrays")
            return {k: npz[k] for k in npz.files}
    except CLIError:
        raise
    except Exception as e:  # noqa: BLE001 - unreadable/corrupt file: one-line message
        raise CLIError(f"{path}: could not read arrays ({type(e).__name__}: {e})") from None


def _eval_pair(spec: str, seed: int, data_dir=None):
    x_tr, y_tr, x_te, y_te = _load_data(spec, seed, data_dir)
    if x_te is not None:
        return x_te, y_te, "test"
    return x_tr, y_tr, "train"


def _inputs(spec: str, seed: int, data_dir=None):
    if spec in ("mnist", "digits") or os.path.isdir(os.path.expanduser(spec)) or data_dir is not None:
        return _load_data(spec, seed, data_dir)[2]
    arrays = _load_arrays(spec)
    for key in ("x", "x_test", "x_train"):
        if key in arrays:
            return arrays[key]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise CLIError(f"{spec}: needs an array named x (has: {', '.join(arrays)})")


def _is_classification(y) -> bool:
    y = np.asarray(y)
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        return np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)
    return False


# -------------------------------------------------------------------------------------- commands
def _hidden(text: str):
    try:
        units = [int(u) for u in text.split(",") if u.strip()] if text.strip() else []
    except ValueError:
        raise CLIError(f"--hidden must be comma-separated layer sizes such as 512,512, got {text!r}") from None
    if any(u <= 0 for u in units):
        raise CLIError(f"--hidden sizes must be positive, got {text!r}")
    return units


def _build_model(fm, input_dim, y, args):
    hidden = _hidden(args.hidden)
    y = np.asarray(y)
    if _is_classification(y):
        if y.min() < 0:
            raise CLIError("class labels must be >= 0")
        n_out, out_activation, loss, metrics = int(y.max()) + 1, "softmax", "sparse_categorical_crossentropy", ["accuracy"]
    else:
        n_out, out_activation, loss, metrics = 1 if y.ndim == 1 else y.shape[1], "linear", "mse", ["mae"]
    layers = fm.layers.mlp_stack(input_dim, hidden, n_out, activation=args.activation,
                                 output_activation=out_activation, dropout=args.dropout,
                                 batch_norm=args.batch_norm)
    model = fm.Sequential(layers, seed=args.seed)
    opt_cls = type(fm.optimizers.get(args.optimizer))
    opt = opt_cls() if args.lr is None else opt_cls(lr=args.lr)
    model.compile(optimizer=opt, loss=loss, metrics=metrics, device=args.device)
    return model


def _check_save_path(path):
    """Fails before training, not after it, when --save cannot be written."""
    folder = os.path.dirname(path) or "."
    if not path or path.endswith(os.sep) or os.path.isdir(path):
        raise CLIError(f"--save {path!r} is a directory; give a file name such as model.fm")
    if not os.path.isdir(folder):
        raise CLIError(f"--save {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"--save {path!r}: the folder {folder!r} is not writable")


def _cmd_train(args):
    import fastmlp as fm

    if args.save is not None:
        _check_save_path(args.save)
    x_tr, y_tr, x_te, y_te = _load_data(args.data, args.seed, args.data_dir)
    if y_tr.ndim == 2 and y_tr.shape[1] == 1:
        y_tr = y_tr[:, 0]
    x_tr = np.asarray(x_tr).reshape(len(x_tr), -1)
    model = _build_model(fm, x_tr.shape[1], y_tr, args)
    if args.verbose:
        model.summary()
    val = None if x_te is None else (np.asarray(x_te).reshape(len(x_te), -1), y_te)
    start = time.perf_counter()
    # verbose=1: Keras's bar, live on a terminal, each epoch's final line elsewhere (fastmlp.progress)
    model.fit(x_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size, verbose=1 if args.verbose else 0,
              validation_data=val)
    seconds = time.perf_counter() - start
    logs = model.evaluate(*val) if val is not None else model.evaluate(x_tr, y_tr)
    which = "test" if val is not None else "train"
    print(f"{which} " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()) + f" ({seconds:.1f}s training)")
    if args.save:
        model.save(args.save)  # atomic, fresh unpredictable temporary name, no symlink followed
        print(f"saved model to {args.save}")
    return 0


def _load(path):
    import fastmlp as fm

    if not os.path.exists(path):
        raise CLIError(f"model file not found: {path}")
    return fm.load_model(path)


def _cmd_evaluate(args):
    model = _load(args.model)
    x, y, which = _eval_pair(args.data, args.seed, args.data_dir)
    x = np.asarray(x).reshape(len(x), -1)
    logs = model.evaluate(x, y)
    print(f"{which} ({len(x)} samples) " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
    return 0


def _cmd_predict(args):
    model = _load(args.model)
    x = np.asarray(_inputs(args.data, args.seed, args.data_dir))
    x = x.reshape(len(x), -1) if x.ndim > 1 else x
    out = np.asarray(model.predict(x))
    loss = model.loss.name
    if not args.proba and loss in ("sparse_categorical_crossentropy", "categorical_crossentropy",
                                   "multiclass_hinge", "binary_crossentropy"):
        out = out.argmax(axis=1) if out.shape[1] > 1 else (out[:, 0] > 0.5).astype(np.int64)
    np.save(args.out, out)
    print(f"wrote predictions of shape {out.shape} to {args.out}")
    return 0


def _cmd_demo(args):
    import fastmlp as fm

    start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = _split_digits(args.seed)
    model = fm.Sequential([fm.Dense(128, activation="relu", input_dim=64),
                           fm.Dense(10, activation="softmax")], seed=args.seed)
    model.compile(optimizer=fm.optimizers.Adam(lr=3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], device=args.device)
    print(f"digits: {len(x_tr)} training / {len(x_te)} test images of 8x8 pixels; "
          f"64-128-10 ReLU network on {model.device}")
    model.fit(x_tr, y_tr, epochs=args.epochs, batch_size=32, verbose=1, validation_data=(x_te, y_te))
    acc = model.evaluate(x_te, y_te)["accuracy"]
    print(f"test accuracy: {acc:.2%} - total time {time.perf_counter() - start:.2f}s")
    return 0


def _cmd_info(args):
    import platform

    import fastmlp as fm

    info = fm.build_info()
    rows = [("fastmlp", fm.__version__), ("python", platform.python_version()), ("numpy", np.__version__),
            ("platform", platform.platform()), ("build type", info["build_type"]), ("BLAS", info["blas"]),
            ("threads", str(fm.get_num_threads())), ("CUDA compiled", str(info["cuda_compiled"]))]
    if info["cuda_compiled"]:
        rows.append(("CUDA version", str(info["cuda_version"])))
        rows.append(("CUDA archs", str(info["cuda_archs"])))
    rows.append(("CUDA available", str(info["cuda_available"])))
    if info["cuda_available"]:
        rows.append(("GPU", str(info["cuda_devices"])))
    elif info.get("cuda_reason"):
        rows.append(("CUDA note", str(info["cuda_reason"])))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    return 0


def _int_at_least(minimum, what):
    """An argparse type for integers >= minimum."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            v = minimum - 1
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a non-negative integer")


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _rate(text):
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1), got {text!r}")
    return v


def _data_epilog() -> str:
    """Where each --data value is read from, with $FASTMLP_DATA's current value."""
    env = os.environ.get("FASTMLP_DATA")
    now = f"now {env}" if env else "not set now"
    return f"""\
where data is looked for:
  --data mnist      MNIST's IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte,
                    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz) in
                    --data-dir DIR when given, else in $FASTMLP_DATA ({now}) or its
                    subfolder mnist, else in ~/.cache/fastmlp/mnist; missing files are
                    downloaded there from public mirrors and checked against SHA-256 digests
  --data DIR        a folder holding those four IDX files (or a subfolder mnist holding them);
                    never downloads (a folder named mnist or digits: write ./mnist)
  --data digits     scikit-learn's 8x8 digits, a stratified 80/20 split by --seed
  --data FILE.npz   arrays x_train, y_train and optionally x_test, y_test
"""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="fastmlp", description="Train and use multilayer perceptrons with fastmlp.")
    p.add_argument("--version", action="version", version=f"fastmlp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    data_help = f"{_DATA_CHOICES} with x_train, y_train [, x_test, y_test] (see below)"
    data_dir_help = ("the folder where --data mnist looks for (and downloads) its IDX files; overrides "
                     "$FASTMLP_DATA")
    epilog = _data_epilog()
    raw = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("train", help="train a model and optionally save it", epilog=epilog, formatter_class=raw,
                       description="Train an MLP; classification when y holds integer labels, else regression.")
    t.add_argument("--data", required=True, help=data_help)
    t.add_argument("--data-dir", default=None, metavar="DIR", help=data_dir_help)
    t.add_argument("--hidden", default="512,512", help="hidden layer sizes, comma-separated (default 512,512)")
    t.add_argument("--activation", default="relu", help="hidden activation (default relu)")
    t.add_argument("--dropout", type=_rate, default=0.0, metavar="RATE",
                   help="a Dropout layer of this rate in [0, 1) after each hidden layer, active in training only "
                        "(default 0: none)")
    t.add_argument("--batch-norm", action="store_true",
                   help="BatchNormalization in each hidden layer, Keras style: Dense (no activation) -> "
                        "BatchNormalization -> Activation")
    t.add_argument("--optimizer", default="adam",
                   help=", ".join(sorted(_optimizer_names())) + " (default adam)")
    t.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default: the optimizer's)")
    t.add_argument("--epochs", type=_non_negative_int, default=10, help="epochs (default 10)")
    t.add_argument("--batch-size", type=_positive_int, default=128, help="batch size (default 128)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    t.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    t.add_argument("--save", default=None, metavar="PATH", help="write the trained model here (e.g. model.fm)")
    t.add_argument("-q", "--quiet", dest="verbose", action="store_false", help="only print the final result")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved model", epilog=epilog, formatter_class=raw,
                       description="Loss and metric of a saved model on the test split (or the training "
                                   "arrays when the data has no test split).")
    e.add_argument("--model", required=True, help="model file written by train --save")
    e.add_argument("--data", required=True, help=data_help)
    e.add_argument("--data-dir", default=None, metavar="DIR", help=data_dir_help)
    e.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the digits split (default 0)")
    e.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="write a saved model's predictions to a .npy file", epilog=epilog,
                        formatter_class=raw,
                        description="Predict with a saved model. Inputs: array x (or x_test, x_train) of a "
                                    ".npz, a .npy array, or the test split of 'mnist', a folder of MNIST IDX "
                                    "files or 'digits'.")
    pr.add_argument("--model", required=True, help="model file written by train --save")
    pr.add_argument("--data", required=True, help="a .npz/.npy file, 'mnist', a folder of MNIST IDX files or "
                                                   "'digits'")
    pr.add_argument("--data-dir", default=None, metavar="DIR", help=data_dir_help)
    pr.add_argument("--out", required=True, help="output .npy file")
    pr.add_argument("--proba", action="store_true", help="write the raw outputs (probabilities), not class ids")
    pr.add_argument("--seed", type=_non_negative_int, default=0, help=argparse.SUPPRESS)
    pr.set_defaults(func=_cmd_predict)

    d = sub.add_parser("demo", help="train a small network on the 8x8 digits (needs scikit-learn)",
                       description="Train a 64-128-10 ReLU network on scikit-learn's digits and report the "
                                   "test accuracy.")
    d.add_argument("--epochs", type=_positive_int, default=20, help="epochs (default 20)")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    d.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("info", help="versions, BLAS, threads and CUDA availability",
                       description="Print versions, BLAS, threads and CUDA availability.")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv=None) -> int:
    """Entry point of the `fastmlp` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise CLIError("missing command: choose train, evaluate, predict, demo or info "
                           "(see 'fastmlp --help')")
        return int(args.func(args) or 0)
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print("fastmlp: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError, ImportError, RuntimeError, ArithmeticError) as e:
        if os.environ.get("FASTMLP_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
            msg = f"{msg}: {e.filename}"
        print(f"fastmlp: error: {msg}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser"]
