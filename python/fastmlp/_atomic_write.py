"""Writing a file so that it is either complete or not there: model.save, ModelCheckpoint and the
CLI's --save all go through write_atomic.

The data goes to a new file in the target's folder, which is then renamed onto the target. The
temporary file is created exclusively under an unpredictable name (O_EXCL: a symlink planted in
advance is never followed) or, on Linux, without any name at all (O_TMPFILE: a process killed
mid-write leaves nothing behind), and it is removed on every failure.
"""
from __future__ import annotations

import errno
import os
import secrets

# Linux: a file opened with O_TMPFILE has no name until linked, so a killed save leaves nothing.
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)


def _temp_name(folder, base):
    # unpredictable, so nobody can plant a symlink there in advance; short enough for NAME_MAX
    return os.path.join(folder, f".{base[:120]}.{secrets.token_hex(8)}.tmp")


def _new_temp(folder, base):
    """(fd, name) of a new empty file in `folder`, mode 0o666 less the umask as open() gives;
    name is None for an anonymous O_TMPFILE file."""
    if _O_TMPFILE and os.path.isdir("/proc/self/fd"):
        try:
            return os.open(folder, _O_TMPFILE | os.O_WRONLY, 0o666), None
        except OSError as e:  # this filesystem or kernel has no O_TMPFILE: use a named file
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP):
                raise
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = _temp_name(folder, base)
        try:  # O_EXCL fails on any existing name, a symlink included, instead of following it
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")


def _link_anonymous(fd, folder, base):
    """Gives the O_TMPFILE file `fd` a fresh unpredictable name in `folder`; returns it."""
    # a dst_dir_fd makes os.link use linkat(AT_SYMLINK_FOLLOW): the file, not the /proc symlink
    dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for _ in range(100):
            name = _temp_name(folder, base)
            try:  # link never overwrites nor follows an existing name
                os.link(f"/proc/self/fd/{fd}", os.path.basename(name), dst_dir_fd=dir_fd)
                return name
            except FileExistsError:
                continue
    finally:
        os.close(dir_fd)
    raise FileExistsError(f"could not name a temporary file in {folder}")


def write_atomic(path, write):
    """Calls write(binary file) on a new file in the folder of `path`, then renames it onto `path`.
    Any failure (KeyboardInterrupt included) removes the temporary and leaves `path` as it was."""
    folder, base = os.path.dirname(path) or ".", os.path.basename(path)
    fd, tmp = _new_temp(folder, base)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the data
            if tmp is None:
                tmp = _link_anonymous(f.fileno(), folder, base)
        os.replace(tmp, path)  # replaces a symlink at `path` itself, never its target
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
