"""The AWS Lambda deployment package of the fsdgraph worker function (handler :data:`HANDLER`).

:func:`build_package` writes one zip with

1. fsdgraph's code in its installed layout: the repository keeps ``backends/`` and ``kernels/``
   as top-level folders, but they import as ``fsdgraph.backends`` and ``fsdgraph.kernels``, so
   each package is found through its ``__path__`` and written under ``fsdgraph/...``. Only
   ``.py`` files and ``py.typed`` go in; tests, benchmarks and docs are not packages and stay out,
   and so does the code a worker never imports (:data:`EXCLUDED_CODE`: the test tools of
   :mod:`fsdgraph.testing`, the command line and its plots, the backends that never run on
   Lambda).
2. the worker's third-party dependencies, installed by pip for Lambda's platform (manylinux,
   CPython ``python_version``, the function's architecture; binary wheels only, so what is
   zipped is what runs there, whatever the build host is) and then :func:`pruned <prune>`.

The zip is deterministic: sorted entries, a fixed timestamp and normalised permissions, so the
same code and the same resolved dependencies give the same bytes, and a deployer can compare its
hash with the function's ``CodeSha256`` to skip a no-op update.

Sizes are checked against :class:`PackageLimits` before anything is written: above the unzipped
limit Lambda rejects the function, so that raises :class:`~fsdgraph.errors.ConfigError` naming
the largest top-level folders. Above the direct-upload limit the zip is still valid (the deployer
uploads it through S3); :meth:`PackageInfo.fits_direct_upload` tells which.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fsdgraph.errors import ConfigError

__all__ = [
    "DEFAULT_DEPENDENCIES",
    "EXCLUDED_CODE",
    "HANDLER",
    "LAMBDA_LIMITS",
    "WORKER_SERVICES",
    "PackageInfo",
    "PackageLimits",
    "build_package",
    "code_files",
    "lambda_platform",
    "package_listing",
    "prune",
]

#: The worker function's entry point, as Lambda's ``Handler`` setting names it.
HANDLER = "fsdgraph.worker.handler"

#: What the worker imports, with the lower bounds of setup.cfg (``install_requires`` and the
#: ``aws`` extra). networkx and tqdm are left out: only the client uses them (``Plan.dag``, which
#: imports networkx lazily, and the scheduler's progress bar), and ``import fsdgraph`` imports
#: neither the scheduler nor the compiler until one of their names is used
#: (tests/test_hygiene.py checks what a worker loads). numba is left out too: with its llvmlite
#: (171 MiB unpacked) the zip would be 357 MiB, above Lambda's 250 MiB, so a zip function runs the
#: scipy kernel; the compiled kernel ships in the container image (:mod:`.image`).
DEFAULT_DEPENDENCIES: tuple[str, ...] = (
    "numpy>=1.24",
    "scipy>=1.10",
    "msgpack>=1.0",
    "lz4>=4.0",
    "aiobotocore>=2.5",
)

#: The AWS services whose botocore models the worker needs: the transports (S3, SNS, SQS, and STS
#: for the account id in topic ARNs) and Lambda, to invoke its children in the invocation tree.
WORKER_SERVICES: tuple[str, ...] = ("s3", "sns", "sqs", "lambda", "sts")

#: The packages holding fsdgraph's code, each mapped from its own source folder (``package_dir``
#: in setup.cfg); their subpackages are the folders below them with an ``__init__.py``.
CODE_PACKAGES: tuple[str, ...] = ("fsdgraph", "fsdgraph.backends", "fsdgraph.kernels")

#: fsdgraph's own modules and subpackages (a trailing ``/``) left out of the function, as arcnames:
#: no worker imports them. The local AWS-API servers are test tools, and the command line and its
#: plots run on the client.
EXCLUDED_CODE: tuple[str, ...] = ("fsdgraph/testing/", "fsdgraph/cli.py", "fsdgraph/plots.py",
                                   "fsdgraph/backends/inproc/", "fsdgraph/backends/ray/")

#: Folders never shipped from fsdgraph's own code.
_SKIP_CODE_DIRS = frozenset({"__pycache__", "tests", "test"})
#: Packages whose ``tests``/``test`` folders are dropped: large, and never imported at run time.
_TESTED_PACKAGES = frozenset({"numpy", "scipy"})
_TEST_DIRS = frozenset({"tests", "test"})

#: Lambda's ``--platform`` spellings: Lambda says ``arm64`` where manylinux says ``aarch64``.
_ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}

#: The oldest timestamp a zip can hold: entries carry it instead of the files' mtimes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
#: How many lines of pip's output a failed install reports.
_PIP_TAIL_LINES = 20


@dataclass(frozen=True)
class PackageLimits:
    """Lambda's size limits on a ``.zip`` deployment package, in bytes.

    The defaults are AWS's quotas: 50 MiB for a zip uploaded directly with the request (larger
    ones go through S3) and 250 MiB for the extracted contents, layers included: a function that
    also uses layers passes ``unzipped_bytes`` less their size.
    """

    #: Largest zip that ``CreateFunction``/``UpdateFunctionCode`` accept inline.
    zipped_direct_bytes: int = 52_428_800
    #: Largest total size of the extracted files (function code plus its layers).
    unzipped_bytes: int = 262_144_000


#: The quotas every Lambda account starts with.
LAMBDA_LIMITS = PackageLimits()


@dataclass(frozen=True)
class PackageInfo:
    """What :func:`build_package` wrote.

    ``dependencies`` are the distributions installed into the zip as ``name==version``, sorted
    (empty when the zip holds fsdgraph's code only).
    """

    path: Path
    zipped_bytes: int
    unzipped_bytes: int
    files: int
    dependencies: tuple[str, ...]

    def fits_direct_upload(self, limits: PackageLimits = LAMBDA_LIMITS) -> bool:
        """Whether the zip can be sent inline with the request rather than through S3."""
        return self.zipped_bytes <= limits.zipped_direct_bytes


def build_package(
    dest: Path,
    *,
    dependencies: Sequence[str] | None = DEFAULT_DEPENDENCIES,
    python_version: str = "3.12",
    architecture: str = "x86_64",
    limits: PackageLimits = LAMBDA_LIMITS,
    pip_args: Sequence[str] = (),
) -> PackageInfo:
    """Write the worker's deployment zip to ``dest`` (replaced atomically) and describe it.

    ``dependencies`` are pip requirements installed for Lambda's ``python_version`` and
    ``architecture`` (``x86_64`` or ``arm64``); ``None`` or empty ships fsdgraph's code only.
    ``pip_args`` go to ``pip install`` as they are (e.g. ``--index-url``, ``--find-links``).

    Raises :class:`~fsdgraph.errors.ConfigError` for an unknown architecture or Python version,
    when pip fails (with the end of its output), or when the extracted size is above
    ``limits.unzipped_bytes``; ``dest`` is then left as it was.
    """
    platform = lambda_platform(architecture)
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise ConfigError(f"python_version must look like '3.12', not {python_version!r}")
    files = code_files()
    module = HANDLER.rpartition(".")[0].replace(".", "/") + ".py"
    if module not in files:
        raise ConfigError(f"the handler module {module} is not among fsdgraph's code")
    with tempfile.TemporaryDirectory(prefix="fsdgraph-lambda-") as tmp:
        installed: tuple[str, ...] = ()
        if dependencies:
            target = Path(tmp) / "target"
            _pip_install(dependencies, target, python_version, platform, pip_args)
            prune(target, WORKER_SERVICES)
            installed = _distributions(target)
            for arcname, path in _tree_files(target).items():
                if arcname in files:
                    raise ConfigError(f"dependency file {arcname} would replace fsdgraph's own")
                files[arcname] = path
        sizes = {arcname: path.stat().st_size for arcname, path in files.items()}
        unzipped = sum(sizes.values())
        if unzipped > limits.unzipped_bytes:
            raise ConfigError(
                f"the Lambda package would be {unzipped} bytes ({_mib(unzipped)}) unzipped, above "
                f"the limit of {limits.unzipped_bytes} bytes ({_mib(limits.unzipped_bytes)}); "
                f"largest top-level folders: {_largest(sizes, 3)}"
            )
        _write_zip(dest, files)
    return PackageInfo(
        path=dest,
        zipped_bytes=dest.stat().st_size,
        unzipped_bytes=unzipped,
        files=len(files),
        dependencies=installed,
    )


def prune(target: Path, keep_services: Collection[str] = WORKER_SERVICES) -> int:
    """Delete what the worker never loads from a pip ``--target`` folder; return the bytes freed.

    Removed: ``__pycache__`` folders and ``*.pyc`` files (Lambda's filesystem is read-only, so
    they could not be refreshed anyway), the contents of ``tests``/``test`` folders inside numpy
    and scipy except ``__init__.py`` and private ``_*.py`` helpers (library code imports some), the
    ``bin`` folder of console scripts (their shebangs name the build host's Python), each
    ``*.dist-info/RECORD`` (an uninstall manifest that pruning makes untrue; the rest of the
    metadata stays, since packages read their own versions from it) and every service folder in
    ``botocore/data`` not named in ``keep_services``. The files directly in ``botocore/data``
    (endpoints, partitions, retry and default configuration) all stay: every client loads them.
    """
    removed = 0
    models = target / "botocore" / "data"
    if models.is_dir():
        for child in sorted(models.iterdir()):
            if child.is_dir() and not child.is_symlink() and child.name not in keep_services:
                removed += _remove(child)
    if (target / "bin").is_dir():
        removed += _remove(target / "bin")
    for dirpath, dirnames, filenames in os.walk(target):
        here = Path(dirpath)
        top = here.relative_to(target).parts[:1]
        for name in sorted(dirnames):
            if name == "__pycache__":
                removed += _remove(here / name)
                dirnames.remove(name)
            elif name in _TEST_DIRS and top and top[0] in _TESTED_PACKAGES:
                removed += _prune_tests(here / name)
                dirnames.remove(name)
        for name in filenames:
            if name.endswith(".pyc") or (name == "RECORD" and here.name.endswith(".dist-info")):
                removed += _remove(here / name)
    return removed


def package_listing(path: Path) -> list[str]:
    """The entry names of the zip at ``path``, in stored order (sorted for our packages)."""
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


# -- what goes in -------------------------------------------------------------------------------


def lambda_platform(architecture: str) -> str:
    """The manylinux machine name of a Lambda architecture (``arm64`` is ``aarch64``)."""
    try:
        return _ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(_ARCHITECTURES))
        raise ConfigError(f"unknown Lambda architecture {architecture!r}; known: {known}") from None


def code_files() -> dict[str, Path]:
    """fsdgraph's code as ``{arcname: source file}``, arcnames in the installed layout, less
    :data:`EXCLUDED_CODE` (what the zip and the container image both ship)."""
    files: dict[str, Path] = {}
    for name in CODE_PACKAGES:
        package = importlib.import_module(name)
        prefix = name.replace(".", "/")
        for root in package.__path__:
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                # Only subpackages: a folder without __init__.py is data or scratch, not code.
                dirnames[:] = sorted(
                    d for d in dirnames
                    if d not in _SKIP_CODE_DIRS and (here / d / "__init__.py").is_file()
                )
                rel = here.relative_to(root).as_posix()
                base = prefix if rel == "." else f"{prefix}/{rel}"
                for filename in filenames:
                    arcname = f"{base}/{filename}"
                    code = filename.endswith(".py") or filename == "py.typed"
                    if code and not _excluded(arcname):
                        _add(files, arcname, here / filename)
    return files


def _excluded(arcname: str) -> bool:
    """Whether ``arcname`` is in :data:`EXCLUDED_CODE`, itself or below an excluded folder."""
    return any(arcname.startswith(entry) if entry.endswith("/") else arcname == entry
               for entry in EXCLUDED_CODE)


def _add(files: dict[str, Path], arcname: str, path: Path) -> None:
    # An installed (non-editable) fsdgraph has backends/ inside fsdgraph/, so the same file is
    # reached from two packages; two different files for one name would be a broken mapping.
    known = files.get(arcname)
    if known is not None and not os.path.samefile(known, path):
        raise ConfigError(f"{arcname} comes from both {known} and {path}")
    files[arcname] = path


def _tree_files(root: Path) -> dict[str, Path]:
    """Every regular file below ``root`` as ``{posix path relative to root: file}``."""
    files: dict[str, Path] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for filename in filenames:
            path = here / filename
            if path.is_file():
                files[path.relative_to(root).as_posix()] = path
    return files


def _pip_install(
    requirements: Sequence[str],
    target: Path,
    python_version: str,
    platform: str,
    pip_args: Sequence[str],
) -> None:
    # pip matches platform tags as strings: a wheel tagged only with the PEP 600 name
    # (manylinux_2_17) would not match the legacy alias, so both are offered. glibc 2.17 is below
    # every Lambda Python runtime's (Amazon Linux 2 and 2023).
    command = [
        sys.executable, "-m", "pip", "install",
        "--target", str(target),
        "--platform", f"manylinux2014_{platform}",
        "--platform", f"manylinux_2_17_{platform}",
        "--implementation", "cp",
        "--python-version", python_version,
        "--only-binary=:all:",
        "--no-compile",
        "--no-input",
        "--disable-pip-version-check",
        *pip_args,
        *requirements,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-_PIP_TAIL_LINES:])
        raise ConfigError(
            f"pip could not install {' '.join(requirements)} for Lambda "
            f"(CPython {python_version}, manylinux2014_{platform}):\n{tail}"
        )


def _distributions(target: Path) -> tuple[str, ...]:
    """``name==version`` of each distribution installed in ``target``, sorted by name."""
    found = {
        (dist.metadata["Name"], dist.version)
        for dist in importlib.metadata.distributions(path=[str(target)])
    }
    return tuple(f"{name}=={version}" for name, version in sorted(found, key=_by_name))


def _by_name(item: tuple[str, str]) -> tuple[str, str]:
    return item[0].lower(), item[1]


def _remove(path: Path) -> int:
    """Delete a file or a folder; return the bytes of the files it held."""
    if path.is_symlink() or not path.is_dir():
        size = path.lstat().st_size
        path.unlink()
        return size
    size = sum(
        (Path(dirpath) / filename).lstat().st_size
        for dirpath, _dirnames, filenames in os.walk(path)
        for filename in filenames
    )
    shutil.rmtree(path)
    return size


def _prune_tests(folder: Path) -> int:
    """Empty a test folder but for its ``__init__.py`` and private ``_*.py`` helpers.

    Library code imports some of those helpers (``numpy.testing`` imports
    ``numpy._core.tests._natype``, and ``from numpy import *`` imports ``numpy.testing``), so the
    folder cannot go as a whole; the tests, their data and subfolders can. A folder left empty
    goes too.
    """
    removed = 0
    for child in sorted(folder.iterdir()):
        keep = child.name == "__init__.py" or (child.name.startswith("_") and child.suffix == ".py")
        if not (keep and child.is_file()):
            removed += _remove(child)
    if not any(folder.iterdir()):
        folder.rmdir()
    return removed

# -- the zip ------------------------------------------------------------------------------------


def _write_zip(dest: Path, files: Mapping[str, Path]) -> None:
    """Write ``files`` to ``dest`` deterministically, through a temporary file in its folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would stick to the zip; "x" gets the usual umask-given mode.
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with zipfile.ZipFile(tmp, "x") as zf:
            for arcname in sorted(files):
                source = files[arcname]
                info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # Unix, so Lambda applies the permission bits below
                # Lambda runs the code as another user than the owner: files must be readable by
                # all, whatever umask they were created with.
                executable = source.stat().st_mode & stat.S_IXUSR
                info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
                with source.open("rb") as src, zf.open(info, "w") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _largest(sizes: Mapping[str, int], count: int) -> str:
    """The ``count`` largest top-level entries of the package with their sizes, largest first."""
    totals: Counter[str] = Counter()
    for arcname, size in sizes.items():
        totals[arcname.split("/", 1)[0]] += size
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:count]
    return ", ".join(f"{name} {_mib(size)}" for name, size in ranked)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
