"""The examples in the docstrings of every module of the installed ``fsdgraph`` package run and
print what they show.

``pytest --doctest-modules`` only sees files under ``testpaths``, and collecting ``backends/`` or
``kernels/`` by path would import them under the wrong name (``backends.local`` rather than
``fsdgraph.backends.local``, a second copy of every class). So the modules are found here by their
installed names and their examples run with :mod:`doctest`, one test per module.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
from types import ModuleType

import pytest

#: Walked for modules. ``fsdgraph.backends`` and ``fsdgraph.kernels`` live outside the
#: ``fsdgraph/`` folder in the source tree (setup.cfg ``package_dir``), so an editable install does
#: not list them under ``fsdgraph.__path__``; names found twice are kept once.
ROOTS = ("fsdgraph", "fsdgraph.backends", "fsdgraph.kernels")

#: The same option flags pytest's own doctest collection uses by default.
OPTIONFLAGS = doctest.ELLIPSIS

#: Fewer docstrings with examples than this means modules went missing, not that the docs shrank
#: (there are about 50, with about 180 examples).
MIN_DOCTESTS = 40


def module_names() -> list[str]:
    """Every module under :data:`ROOTS`. A subpackage that fails to import is listed too (the
    walk would skip it and its modules silently), so its test fails with the import error."""
    names: set[str] = set()
    for root in ROOTS:
        package = importlib.import_module(root)
        names.add(root)
        names.update(info.name for info in pkgutil.walk_packages(package.__path__, root + ".",
                                                                 onerror=names.add))
    return sorted(n for n in names if n.rpartition(".")[2] != "__main__")  # runs on import


MODULES = module_names()


def doctests(module: ModuleType) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module, module.__name__) if t.examples]


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name: str) -> None:
    """Every example of the module gives the output its docstring shows."""
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    out = io.StringIO()
    failed = attempted = 0
    for test in doctests(module):
        result = runner.run(test, out=out.write)
        failed, attempted = failed + result.failed, attempted + result.attempted
    assert failed == 0, f"{failed} of {attempted} examples failed:\n{out.getvalue()}"


def test_examples_are_found() -> None:
    """The walk finds the package's modules and their examples (it cannot pass on nothing)."""
    for expected in ("fsdgraph.graph", "fsdgraph.backends.local", "fsdgraph.kernels.layer"):
        assert expected in MODULES
    found = [t for name in MODULES for t in doctests(importlib.import_module(name))]
    assert len(found) > MIN_DOCTESTS
    assert sum(len(t.examples) for t in found) > 3 * MIN_DOCTESTS
