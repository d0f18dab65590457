"""Output files that appear whole or not at all.

A command that fails or is interrupted must leave no new or changed output file (docs/usage.md,
Errors): not a kmodel, not half a report folder, not some of `kcc infer`'s .bin files. `Outputs` is
the transaction that makes this hold: every output is written into a hidden staging folder next to
its final place (`.NAME.kcc-XXXXXXXX` for a file, `DIR/.kcc-XXXXXXXX` for a folder's files), and
`commit()` publishes them all with renames within the same folder (atomic on POSIX), with Ctrl-C held
back for those few renames. Folders' files go first and the files given to `file()` last, in order,
so a kmodel given last is the commit point. Until `commit()`, `abort()` (also run when a `with` block
is left by an exception) removes the staging folders and every folder the transaction created.

Only `os`, `signal` and `pathlib` are imported: `kcc.cli` loads this before the compiler, and a Ctrl-C
must find kcc's handler installed as early as possible.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kcc.errors import KccError


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C back until the block is done, then deliver it to the handler of before.

    Python runs signal handlers in the main thread between bytecodes, so blocking SIGINT in the
    kernel would not help once another thread (tqdm's monitor, OpenBLAS) can receive it: the
    Python-level handler is swapped instead. Outside the main thread, or under a handler Python did
    not install (`getsignal` is None), the block runs as it is."""
    try:
        if signal.getsignal(signal.SIGINT) is None:
            raise ValueError("SIGINT handler not installed from Python")
        caught: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


class Outputs:
    """Staged output files, published together by `commit()` or removed by `abort()`."""

    def __init__(self) -> None:
        self._created: list[Path] = []  # folders this transaction made (staging and missing targets)
        self._staging: list[Path] = []
        self._folders: list[tuple[Path, Path]] = []  # (staging folder, final folder)
        self._files: list[tuple[Path, Path]] = []  # (staged file, final path)
        self.committed = False

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if not self.committed:
            self.abort()

    def _mkdir(self, path: Path, mode: int = 0o777) -> None:
        # recorded before it exists: an interrupt between the two steps must not lose track of it
        self._created.append(path)
        try:
            os.mkdir(path, mode)
        except BaseException:
            self._created.pop()
            raise

    def _new_staging(self, folder: Path, name: str) -> Path:
        for _ in range(100):
            staging = folder / f"{name}.kcc-{os.urandom(4).hex()}"
            try:
                self._mkdir(staging, 0o700)  # private until published
            except FileExistsError:
                continue
            self._staging.append(staging)
            return staging
        raise FileExistsError(f"no free staging name in '{folder}'")

    def file(self, path: Path, data: bytes) -> None:
        """Stage `data` as the file `path`; its folder must exist."""
        path = Path(path)
        folder = _folder(path)
        if not folder.is_dir():
            raise KccError(f"cannot write '{path}': directory '{folder}' does not exist")
        if path.is_dir():
            raise KccError(f"cannot write '{path}': it is a directory")
        try:
            staged = self._new_staging(folder, f".{path.name}") / path.name
            staged.write_bytes(data)
        except OSError as e:
            raise KccError(f"cannot write '{path}': {e.strerror or e}") from None
        self._files.append((staged, path))

    def directory(self, path: Path) -> Path:
        """A folder to write the files of the folder `path` into (created, with its parents, if
        missing); they appear in `path` at `commit()`."""
        path = Path(path)
        missing = []
        parent = path
        while not parent.exists() and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        try:
            for folder in reversed(missing):
                self._mkdir(folder)
            if not path.is_dir():
                raise NotADirectoryError(20, "not a directory")
            staging = self._new_staging(path, "")
        except OSError as e:
            raise KccError(f"cannot create directory '{path}': {e.strerror or e}") from None
        self._folders.append((staging, path))
        return staging

    def commit(self) -> None:
        """Publish every staged file; Ctrl-C waits until the last rename is done."""
        moves = [(entry, final / entry.name) for staging, final in self._folders
                 for entry in sorted(staging.iterdir())] + self._files
        for staged, final in moves:  # refuse before the first rename, not half-way through
            if final.is_dir() and not staged.is_dir():
                raise KccError(f"cannot write '{final}': it is a directory")
        with sigint_deferred():
            try:
                for staged, final in moves:
                    os.replace(staged, final)
            except OSError as e:
                raise KccError(f"cannot write '{e.filename2 or e.filename}': {e.strerror}") from None
            self.committed = True
            self._remove_staging()

    def abort(self) -> None:
        """Remove everything staged and every folder created; safe to call more than once."""
        if self.committed:
            return
        with sigint_deferred():
            self._remove_staging()
            for folder in reversed(self._created):
                try:
                    folder.rmdir()
                except OSError:
                    pass  # gone already, or holds files someone else put there
            self._created.clear()
            self._folders.clear()
            self._files.clear()

    def _remove_staging(self) -> None:
        for staging in self._staging:
            try:
                for entry in os.scandir(staging):  # staging folders are flat
                    os.unlink(entry.path)
                os.rmdir(staging)
            except OSError:
                pass
        self._created = [p for p in self._created if p not in self._staging]
        self._staging.clear()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a staged copy in the same folder, so a failure leaves nothing."""
    with Outputs() as outputs:
        outputs.file(path, data)
        outputs.commit()
