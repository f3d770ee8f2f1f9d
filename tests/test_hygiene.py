"""What a worker function loads: nothing of the client side or of the test tools.

A Lambda function imports its handler's module, ``fsdgraph.worker``, and when it runs, its
channel's and its backend's modules. Each check runs in a fresh interpreter, so what the test
process has imported already does not count.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

#: Modules a worker must not load: the scheduler and its progress bar, the compiler and the task
#: DAG, bills and estimates, the command line and its plots, the local AWS-API servers and moto.
CLIENT_SIDE = (
    "tqdm",
    "networkx",
    "matplotlib",
    "moto",
    "fsdgraph.scheduler",
    "fsdgraph.compiler",
    "fsdgraph.planner",
    "fsdgraph.simulate",
    "fsdgraph.partitioners",
    "fsdgraph.cost.bill",
    "fsdgraph.cost.estimate",
    "fsdgraph.cost.paper",
    "fsdgraph.cli",
    "fsdgraph.plots",
    "fsdgraph.testing",
    "fsdgraph.testing.lambda_endpoint",
    "fsdgraph.testing.aws_servers",
)

#: What a worker imports when it runs: the handler's module, every built-in channel and backend.
RUNTIME = (
    "fsdgraph.worker",
    "fsdgraph.channels.queue",
    "fsdgraph.channels.object",
    "fsdgraph.channels.auto",
    "fsdgraph.backends.local",
    "fsdgraph.backends.aws",
)


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    done = subprocess.run(
        [sys.executable, "-c",
         f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def client_side(loaded: set[str]) -> list[str]:
    """The :data:`CLIENT_SIDE` modules in ``loaded``, submodules included."""
    return sorted(name for name in loaded
                  if any(name == m or name.startswith(m + ".") for m in CLIENT_SIDE))


def test_the_handler_module_loads_no_client_side_code() -> None:
    assert client_side(loaded_after("import fsdgraph.worker")) == []


def test_a_running_worker_loads_no_client_side_code() -> None:
    if importlib.util.find_spec("aiobotocore") is None:
        pytest.skip("the aws backend needs aiobotocore: pip install -e '.[aws]'")
    loaded = loaded_after(f"import {', '.join(RUNTIME)}")
    assert set(RUNTIME) <= loaded
    assert client_side(loaded) == []


def test_import_fsdgraph_imports_no_submodule() -> None:
    loaded = loaded_after("import fsdgraph")
    assert sorted(name for name in loaded if name.startswith("fsdgraph.")) == []


def test_every_cost_name_is_there() -> None:
    import fsdgraph.cost as cost  # eager: only client-side code imports it (prices live apart)

    assert [name for name in cost.__all__ if not hasattr(cost, name)] == []


@pytest.mark.parametrize("package", ["fsdgraph"])
def test_every_public_name_resolves_on_first_use(package: str) -> None:
    # In a fresh interpreter, so that each name is resolved through the package's __getattr__.
    script = (
        f"import {package} as p\n"
        "assert set(p.__all__) <= set(dir(p)), set(p.__all__) - set(dir(p))\n"
        "assert set(p._LAZY) == set(p.__all__), set(p._LAZY) ^ set(p.__all__)\n"
        "for name in p.__all__:\n"
        "    value = getattr(p, name)\n"
        "    assert getattr(__import__(p._LAZY[name], fromlist=[name]), name) is value, name\n"
        "    assert name in vars(p), name\n"
        "try:\n"
        "    p.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_cost_functions_are_not_hidden_by_their_submodules() -> None:
    # fsdgraph.cost.paper imports fsdgraph.cost.bill: the package's "bill" stays the function.
    loaded_after(
        "import inspect, fsdgraph.cost.paper, fsdgraph.cost.estimate\n"
        "import fsdgraph.cost as cost\n"
        "from fsdgraph.cost import bill, estimate\n"
        "assert inspect.isfunction(bill) and inspect.isfunction(estimate), (bill, estimate)\n"
        "assert cost.bill is bill and cost.estimate is estimate\n"
        "assert inspect.ismodule(__import__('sys').modules['fsdgraph.cost.bill'])"
    )
