"""The Lambda deployment package: layout, determinism, pruning and size limits.

Everything runs offline: the third-party install is exercised with a wheel built here and
``pip --no-index --find-links``, never PyPI. The zip built with fsdgraph's code only is unzipped
and imported in a fresh interpreter, so the installed layout is shown to import on its own (its
third-party imports resolve from the current environment).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fsdgraph.backends.aws.package import (
    DEFAULT_DEPENDENCIES,
    EXCLUDED_CODE,
    HANDLER,
    LAMBDA_LIMITS,
    PackageInfo,
    PackageLimits,
    build_package,
    code_files,
    package_listing,
    prune,
)
from fsdgraph.errors import ConfigError

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


@pytest.fixture(scope="module")
def code_zip(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    """fsdgraph's code alone, built once for the tests that only read it."""
    return build_package(tmp_path_factory.mktemp("code") / "f.zip", dependencies=None)


def _wheel(folder: Path, name: str = "fakedep", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, with what prune removes: a ``.pyc`` and a console script."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"def main() -> None:\n    pass\n",
        f"{name}/__pycache__/__init__.cpython-312.pyc": b"\0" * 64,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{dist}/entry_points.txt": f"[console_scripts]\n{name} = {name}:main\n".encode(),
    }
    record = "".join(f"{arcname},,\n" for arcname in [*files, f"{dist}/RECORD"])
    files[f"{dist}/RECORD"] = record.encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, data in files.items():
            zf.writestr(arcname, data)
    return path


# -- fsdgraph's code --------------------------------------------------------------------------


def test_code_is_zipped_in_the_installed_layout(code_zip: PackageInfo) -> None:
    names = package_listing(code_zip.path)
    for expected in (
        "fsdgraph/worker.py",
        "fsdgraph/py.typed",
        "fsdgraph/backends/__init__.py",
        "fsdgraph/backends/aws/transports.py",
        "fsdgraph/backends/aws/package.py",
        "fsdgraph/backends/local/__init__.py",
        "fsdgraph/kernels/layer.py",
    ):
        assert expected in names
    assert names == sorted(names)
    assert all(name.startswith("fsdgraph/") for name in names)
    assert all(name.endswith((".py", "/py.typed")) for name in names)
    parts = {part for name in names for part in name.split("/")}
    assert not parts & {"__pycache__", "tests", "test", "bench", "docs"}
    assert code_zip.files == len(names)
    assert code_zip.dependencies == ()
    with zipfile.ZipFile(code_zip.path) as zf:
        infos = zf.infolist()
    assert code_zip.unzipped_bytes == sum(info.file_size for info in infos)
    assert code_zip.zipped_bytes == code_zip.path.stat().st_size
    assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in infos)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {(info.external_attr >> 16) & 0o777 for info in infos} == {0o644}


def test_every_declared_package_is_shipped(code_zip: PackageInfo) -> None:
    # A package mapped from a new source folder must be reachable from the walked packages.
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    declared = cfg["options"]["packages"].split()
    names = set(package_listing(code_zip.path))
    for package in declared:
        init = f"{package.replace('.', '/')}/__init__.py"
        if not any(init.startswith(entry) for entry in EXCLUDED_CODE):
            assert init in names, package


def test_test_tools_and_client_code_are_left_out(code_zip: PackageInfo) -> None:
    names = package_listing(code_zip.path)
    assert "fsdgraph/testing/" in EXCLUDED_CODE
    assert not [name for name in names if name.startswith("fsdgraph/testing/")]
    assert "fsdgraph/cli.py" not in names
    assert "fsdgraph/plots.py" not in names
    handler_module = HANDLER.rpartition(".")[0].replace(".", "/") + ".py"
    assert handler_module == "fsdgraph/worker.py"
    assert handler_module in names


def test_the_zip_leaves_numba_out_and_stays_under_the_limit(code_zip: PackageInfo) -> None:
    """numba and its llvmlite do not fit a zip (the container image ships them): the zip's
    workers run the scipy kernel, whose code it holds beside the compiled one's."""
    names = package_listing(code_zip.path)
    assert not [d for d in DEFAULT_DEPENDENCIES if re.match(r"(numba|llvmlite)\b", d)]
    assert not [n for n in names if n.startswith(("numba/", "llvmlite/"))]
    assert {"fsdgraph/kernels/fallback.py", "fsdgraph/kernels/choice.py",
            "fsdgraph/kernels/fused.py"} <= set(names)
    assert code_zip.unzipped_bytes < LAMBDA_LIMITS.unzipped_bytes
    assert sorted(code_files()) == names  # the selection the container image copies too


def test_zipped_code_imports_on_its_own(code_zip: PackageInfo, tmp_path: Path) -> None:
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(code_zip.path) as zf:
        zf.extractall(unzipped)
    done = subprocess.run(
        [
            sys.executable, "-c",
            "import fsdgraph.worker, fsdgraph.backends.aws.transports; "
            "print(fsdgraph.worker.__file__)",
        ],
        env={**os.environ, "PYTHONPATH": str(unzipped)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    worker_file = Path(done.stdout.strip()).resolve()
    assert worker_file.is_relative_to(unzipped.resolve())


def test_every_zipped_module_imports_without_the_left_out_code(
        code_zip: PackageInfo, tmp_path: Path) -> None:
    # Each module (but the __main__ scripts) is imported from the unzipped tree; a module
    # importing left-out code would load it from the source tree instead (the editable install's
    # finder), which the files show.
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(code_zip.path) as zf:
        zf.extractall(unzipped)
    modules = sorted(
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in package_listing(code_zip.path)
        if name.endswith(".py") and not name.endswith("/__main__.py")
    )
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({name: getattr(module, '__file__', None)\n"
        "                  for name, module in sys.modules.items()\n"
        "                  if name == 'fsdgraph' or name.startswith('fsdgraph.')}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(unzipped)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert set(modules) <= set(loaded)
    outside = {name: file for name, file in loaded.items()
               if file is None or not Path(file).resolve().is_relative_to(unzipped.resolve())}
    assert not outside


def test_building_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    first = build_package(tmp_path / "first.zip", dependencies=None)
    second = build_package(tmp_path / "second.zip", dependencies=None)
    assert first.path.read_bytes() == second.path.read_bytes()


def test_unzipped_size_above_the_limit_is_refused(code_zip: PackageInfo, tmp_path: Path) -> None:
    dest = tmp_path / "small.zip"
    limit = 10_000
    assert code_zip.unzipped_bytes > limit
    with pytest.raises(ConfigError) as caught:
        build_package(dest, dependencies=None, limits=PackageLimits(unzipped_bytes=limit))
    message = str(caught.value)
    # The code's own size, read from the message (the tree may change between builds).
    stated = re.search(r"would be (\d+) bytes", message)
    assert stated is not None, message
    assert int(stated.group(1)) > limit
    assert f"limit of {limit} bytes" in message
    assert "fsdgraph" in message  # the largest (and only) top-level folder
    assert not dest.exists()


def test_direct_upload_limit_only_informs() -> None:
    info = PackageInfo(Path("x.zip"), zipped_bytes=100, unzipped_bytes=300, files=1,
                       dependencies=())
    assert info.fits_direct_upload(PackageLimits(zipped_direct_bytes=100))
    assert not info.fits_direct_upload(PackageLimits(zipped_direct_bytes=99))


def test_unknown_architecture_or_python_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="architecture"):
        build_package(tmp_path / "x.zip", dependencies=None, architecture="sparc")
    with pytest.raises(ConfigError, match="python_version"):
        build_package(tmp_path / "x.zip", dependencies=None, python_version="312")
    assert not (tmp_path / "x.zip").exists()


# -- third-party dependencies -----------------------------------------------------------------


def test_dependencies_are_installed_for_lambda_and_pruned(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    info = build_package(
        tmp_path / "deps.zip",
        dependencies=("fakedep",),
        pip_args=("--no-index", "--find-links", str(wheels)),
    )
    names = package_listing(info.path)
    assert "fakedep/__init__.py" in names
    assert "fakedep-1.0.dist-info/METADATA" in names
    assert "fakedep-1.0.dist-info/entry_points.txt" in names
    assert "fsdgraph/worker.py" in names
    assert not [name for name in names if name.endswith(".pyc") or "__pycache__" in name]
    assert "fakedep-1.0.dist-info/RECORD" not in names
    assert not [name for name in names if name.startswith("bin/")]
    assert info.dependencies == ("fakedep==1.0",)
    assert names == sorted(names)


def test_pip_failure_is_a_config_error_with_pips_words(tmp_path: Path) -> None:
    dest = tmp_path / "deps.zip"
    with pytest.raises(ConfigError) as caught:
        build_package(
            dest,
            dependencies=("fakedep-not-there",),
            pip_args=("--no-index", "--find-links", str(tmp_path)),
        )
    message = str(caught.value)
    assert "fakedep-not-there" in message
    assert "No matching distribution" in message
    assert not dest.exists()


def test_prune_a_fake_install(tmp_path: Path) -> None:
    sizes = {
        # kept
        "botocore/__init__.py": 10,
        "botocore/data/endpoints.json": 100,
        "botocore/data/partitions.json": 20,
        "botocore/data/s3/2006-03-01/service-2.json": 300,
        "botocore/data/sqs/2012-11-05/service-2.json": 30,
        "numpy/__init__.py": 5,
        "numpy/testing/__init__.py": 6,
        "numpy/_core/tests/_natype.py": 7,  # numpy.testing imports it
        "scipy/linalg/tests/__init__.py": 8,
        "pkg/__init__.py": 9,
        "pkg-1.0.dist-info/METADATA": 11,
        # removed
        "botocore/data/ec2/2016-11-15/service-2.json": 1000,
        "botocore/data/ec2/2016-11-15/paginators-1.json": 200,
        "numpy/tests/x.py": 12,
        "numpy/_core/tests/test_umath.py": 13,
        "numpy/_core/tests/data/table.csv": 14,
        "scipy/linalg/tests/y.py": 15,
        "pkg/__pycache__/z.pyc": 16,
        "pkg/stale.pyc": 17,
        "pkg-1.0.dist-info/RECORD": 18,
        "bin/pkg": 19,
    }
    removed = {name for name in sizes if name.startswith("botocore/data/ec2/")} | {
        "numpy/tests/x.py", "numpy/_core/tests/test_umath.py", "numpy/_core/tests/data/table.csv",
        "scipy/linalg/tests/y.py", "pkg/__pycache__/z.pyc", "pkg/stale.pyc",
        "pkg-1.0.dist-info/RECORD", "bin/pkg",
    }
    for name, size in sizes.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)

    freed = prune(tmp_path, keep_services=("s3", "sqs"))

    assert freed == sum(sizes[name] for name in removed)
    left = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert left == set(sizes) - removed
    for folder in ("botocore/data/ec2", "numpy/tests", "pkg/__pycache__", "bin",
                   "numpy/_core/tests/data"):
        assert not (tmp_path / folder).exists(), folder
    assert prune(tmp_path, keep_services=("s3", "sqs")) == 0
