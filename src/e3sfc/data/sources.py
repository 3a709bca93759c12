"""Where dataset files come from: local directories first, then a checked download.

Resolution order for a dataset's files (docs/design.md §1.5):
1. ``--data-dir`` (must exist if given),
2. ``$E3SFC_DATA``,
3. the user cache (``$XDG_CACHE_HOME/e3sfc`` or ``~/.cache/e3sfc``),
4. ``/usr/share/datasets/fashion-mnist`` for ``fmnist`` (Debian ``dataset-fashion-mnist``),
5. a download from the canonical source into ``--data-dir`` or the cache, each file
   checked against its SHA-256 before it is moved into place.

Each root is searched as is and under a sub-folder named after the dataset.
Setting ``E3SFC_NO_DOWNLOAD=1`` turns step 5 off (the tests do).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, shorten

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Remote:
    """One downloadable file: its URL and checksum (SHA-256, or MD5 where the publisher lists only
    that: ``md5:<hex>``); ``extract`` for tar archives; ``name``: the file name when the URL's last
    part is not one."""

    url: str
    sha256: str
    extract: bool = False
    name: str = ""

    @property
    def file_name(self) -> str:
        return self.name or self.url.rsplit("/", 1)[-1]

    def digest(self, path: Path) -> str:
        """``path``'s checksum in the form of ``sha256`` (hex, or ``md5:`` hex)."""
        if self.sha256.startswith("md5:"):
            h = hashlib.md5()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return "md5:" + h.hexdigest()
        return sha256_file(path)


@dataclass(frozen=True)
class Source:
    name: str
    files: tuple[str, ...]  # paths relative to the dataset root that must all exist
    remotes: tuple[Remote, ...] = ()
    system_dirs: tuple[str, ...] = ()
    subdirs: tuple[str, ...] = ()  # extra sub-folders to look in


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "e3sfc"


def _has_all(root: Path, files: tuple[str, ...]) -> bool:
    return all((root / f).is_file() for f in files)


def is_folder(p: Path) -> bool:
    """Whether ``p`` is a folder; False where the path cannot even be looked up (a name too long, ...)."""
    try:
        return p.is_dir()
    except OSError:
        return False


def missing_folder(data_dir: str) -> DataError:
    """The one-line error for a ``--data-dir`` that is not a folder (a long name cut to 80 characters)."""
    return DataError(f"--data-dir: directory {shorten(data_dir)!r} does not exist")


def candidate_roots(src: Source, data_dir: str | None) -> list[Path]:
    roots: list[Path] = []
    if data_dir is not None:
        p = Path(data_dir)
        if not is_folder(p):
            raise missing_folder(data_dir)
        roots.append(p)
    env = os.environ.get("E3SFC_DATA")
    if env:
        roots.append(Path(env))
    roots.append(cache_dir())
    roots.extend(Path(d) for d in src.system_dirs)
    out: list[Path] = []
    for r in roots:
        out.append(r)
        out.extend(r / s for s in (src.name, *src.subdirs))
    return out


def resolve(src: Source, data_dir: str | None) -> Path:
    """Return a directory holding all of ``src.files``, downloading them if needed. With ``data_dir`` only
    that folder (and its subfolders named after the dataset) is looked in: files missing there are an error
    (or a download into it), never a silent fallback to another copy."""
    roots = candidate_roots(src, data_dir)
    if data_dir is not None:
        roots = [r for r in roots if r == Path(data_dir) or Path(data_dir) in r.parents]
    for root in roots:
        if _has_all(root, src.files):
            log.debug("dataset %s found in %s", src.name, root)
            return root
    if data_dir is not None and (os.environ.get("E3SFC_NO_DOWNLOAD") or not src.remotes):
        missing = [f for f in src.files if not (Path(data_dir) / f).is_file()]
        folders = [f for f in missing if (Path(data_dir) / f).is_dir()]
        raise DataError(
            f"--data-dir: dataset {src.name!r} not found in {data_dir!r} (missing {', '.join(missing[:4])}"
            f"{' and more' if len(missing) > 4 else ''}{'; ' + folders[0] + ' is a folder' if folders else ''}); "
            f"expected its files there or in {src.name}/ under it (no other copy is used with --data-dir)")
    if os.environ.get("E3SFC_NO_DOWNLOAD") or not src.remotes:
        where = ", ".join(str(r) for r in roots[:: 2 + len(src.subdirs)])
        how = "downloads are off (E3SFC_NO_DOWNLOAD)" if src.remotes else "it has no download source"
        raise DataError(
            f"dataset {src.name!r} not found (looked for {src.files[0]} and the rest in {where}) "
            f"and {how}; put the files in a folder and pass --data-dir"
        )
    target = (Path(data_dir) if data_dir is not None else cache_dir()) / src.name
    download(src, target)
    if not _has_all(target, src.files):
        raise DataError(f"dataset {src.name!r}: download finished but files are missing in {target}")
    return target


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(src: Source, target: Path) -> None:
    """Download each remote into ``target``, verifying SHA-256 before the atomic move."""
    target.mkdir(parents=True, exist_ok=True)
    for remote in src.remotes:
        name = remote.file_name
        dest = target / name
        if dest.is_file() and remote.digest(dest) == remote.sha256 and not remote.extract:
            continue
        log.info("downloading %s", remote.url)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            try:
                from tqdm import tqdm

                with urllib.request.urlopen(remote.url, timeout=30) as r, open(tmp_path, "wb") as f, \
                        tqdm(total=int(r.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                             desc=f"{src.name}: {name}", disable=None, leave=False) as bar:
                    for chunk in iter(lambda: r.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
            except OSError as exc:
                raise DataError(
                    f"dataset {src.name!r}: could not download {remote.url} ({exc}); "
                    f"put the files in a folder and pass --data-dir"
                ) from None
            digest = remote.digest(tmp_path)
            if digest != remote.sha256:
                kind = "MD5" if remote.sha256.startswith("md5:") else "SHA-256"
                raise DataError(
                    f"dataset {src.name!r}: {name} has {kind} {digest.removeprefix('md5:')}, expected "
                    f"{remote.sha256.removeprefix('md5:')}; the download is corrupt or not the file (a web "
                    f"page instead: fetch {remote.url} in a browser and pass --data-dir), nothing was kept"
                )
            if remote.extract:
                with tarfile.open(tmp_path) as tar:
                    tar.extractall(target, filter="data")
            else:
                os.replace(tmp_path, dest)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()
