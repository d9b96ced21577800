"""Crash-safe file output: write to a temporary path next to the target, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from t3s_nemo.errors import T3SError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_permissions(path: str | Path) -> None:
    """The permissions open() would give (0666 less the umask), for files a library creates 0600."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp creates 0600; outputs are shared on clusters, so use the permissions open() would give
    open_permissions(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def read_text(path: str | Path, what: str, directory_hint: str = "") -> str:
    """A UTF-8 text file's content; one T3SError naming the file when it is missing, a directory (with
    directory_hint, e.g. which file to give instead), not UTF-8 or unreadable."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise T3SError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise T3SError(f"{path}: is a directory; {directory_hint or f'expected the {what}'}") from None
    except UnicodeDecodeError as e:
        raise T3SError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected the {what}") from None
    except OSError as e:
        raise T3SError(f"{path}: cannot read the {what}: {e.strerror}") from None


def read_json(path: str | Path, what: str = "file", expect: Optional[type] = None) -> Any:
    """A JSON file's value; one T3SError naming the file for a missing, unreadable or malformed one
    (or, with expect=dict/list, one whose top level is another type)."""
    path = Path(path)
    text = read_text(path, what, f"expected the {what} (a JSON file)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise T3SError(f"{path}:{e.lineno}: invalid JSON in {what}: {e.msg}") from None
    if expect is not None and not isinstance(value, expect):
        want = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise T3SError(f"{path}: {what} must be {want}, got {type(value).__name__}")
    return value


def check_replaceable(output: str | Path, inputs: Iterable = (), overwrite: bool = True) -> None:
    """One clear error before an output directory is (re)written where that would lose data: it exists
    and overwrite is off, it is a file, or it is (or contains) one of the command's inputs, which
    replacing it would delete."""
    output = Path(output)
    out = output.resolve()
    for i in inputs:
        if i is None or str(i) == "":
            continue
        p = Path(i).resolve()
        if out == p or out in p.parents:
            raise T3SError(f"{output}: output {'is' if out == p else 'contains'} the input {i}; replacing it "
                           "would delete the input. Write to another directory")
    if output.exists() and not output.is_dir():
        raise T3SError(f"{output}: output exists and is not a directory; refusing to replace it")
    if output.exists() and not overwrite:
        raise T3SError(f"{output}: output directory exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def staged_dir(final: str | Path, overwrite: bool = False, inputs: Iterable = ()) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes `final` only if the block succeeds.

    An existing `final` is refused unless overwrite (and always when it is a file or holds one of
    `inputs`: check_replaceable); it is replaced only after the new one is whole.
    """
    final = Path(final)
    check_replaceable(final, inputs, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; see atomic_write_text
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
