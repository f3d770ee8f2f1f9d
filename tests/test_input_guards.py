"""Bad input is refused up front, with exit code 2 and a message that says what and where.

Every refusal here is checked by its exit code (or error class) and its message. Runs that
must not start use ``--backend inproc --channel object`` where a backend is needed at all, so
nothing but the check under test is exercised; the memory checks see a machine of a fixed size
(``small_machine``), never this one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
import fsdgraph.sources.memory as memory
from fsdgraph.channels import ChannelConfig
from fsdgraph.cli import check_writable, main
from fsdgraph.config import load_settings
from fsdgraph.errors import ConfigError, GraphError, InputError
from fsdgraph.sources.graphchallenge import load_images, load_weights

GiB = 2**30
INPROC = ["--backend", "inproc", "--channel", "object", "--no-progress"]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; assert it exits 2 without a traceback and without running; return stderr."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert "layers x" not in out, "the run started"
    return err.strip()


@pytest.fixture
def small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with 16 GiB available, whatever this one has."""
    monkeypatch.setattr(memory, "available_bytes", lambda: 16 * GiB)


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "n1024-l1.tsv").write_text("1\t1\t0.5\n2\t1\t0.5\n")
    return folder


def files_run(weights: Path, images: Path, *extra: str) -> list[str]:
    return ["graphchallenge", "--weights", str(weights), "--images", str(images), "--layers",
            "1", *INPROC, *extra]


# -- 1. image ids and memory ----------------------------------------------------------------------
@pytest.mark.parametrize("image", [2_000_000_000, 999_999_999_999])
def test_an_image_id_far_above_the_entries_is_refused_with_file_and_line(
        tmp_path: Path, weights_dir: Path, image: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images.tsv"
    images.write_text(f"1 1 1\n{image} 3 1\n")
    why = (f"{images}:2: image {image} out of range 1..1026 (the file has 2 entries; without a "
           f"declared count, image ids may exceed them by at most 1024: Graph Challenge files "
           f"number their images 1..N)")
    assert refused(files_run(weights_dir, images), capsys) == f"fsdgraph: error: {why}"
    with pytest.raises(InputError) as info:
        load_images(images, 1024)
    assert str(info.value) == why


def test_images_numbered_1_to_n_with_a_few_empty_ones_still_load(tmp_path: Path) -> None:
    images = tmp_path / "images.tsv"
    images.write_text("1 1 1\n3 2 1\n")  # image 2 has no pixel
    assert load_images(images, 4).shape == (3, 4)


def test_a_declared_image_count_is_checked_against_memory_before_allocating(
        tmp_path: Path, small_machine: None) -> None:
    images = tmp_path / "images.tsv"
    images.write_text("1 1 1\n")
    with pytest.raises(InputError) as info:
        load_images(images, 1024, count=10**12)
    assert str(info.value) == ("count=1000000000000 images needs about 7450.6 GiB of memory, but "
                               "this machine has 16.0 GiB available")


def test_a_file_too_big_to_parse_is_refused_before_parsing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    images = tmp_path / "images.tsv"
    images.write_text("1 1 1\n" * 20)
    with pytest.raises(InputError) as info:
        load_images(images, 1024)
    assert str(info.value) == (f"parsing {images} (120 bytes) needs about 2.3 KiB of memory, but "
                               f"this machine has 1000 bytes available")


def test_a_synthetic_network_too_big_for_the_machine_is_refused_with_an_estimate(
        small_machine: None, capsys: pytest.CaptureFixture[str]) -> None:
    """--neurons 1048576 x 120 layers is 4 billion weights (48 GiB as CSR) before any copy:
    generating it used to end in a MemoryError traceback."""
    err = refused(["graphchallenge", "--synthetic", "--neurons", "1048576", *INPROC], capsys)
    assert err == ("fsdgraph: error: --synthetic --neurons 1048576 --layers 120 --images 1000 "
                   "needs about 189.6 GiB of memory, but this machine has 16.0 GiB available")
    err = refused(["plan", "--synthetic", "--neurons", "1048576", "--layers", "12"], capsys)
    assert err == ("fsdgraph: error: --synthetic --neurons 1048576 --layers 12 needs about "
                   "18.4 GiB of memory, but this machine has 16.0 GiB available")
    err = refused(["plan", "--synthetic", "--layers", "2", "--activation-aware", "10000000"],
                  capsys)
    assert err == ("fsdgraph: error: --synthetic --neurons 1024 --layers 2 --activation-aware "
                   "10000000 needs about 57.5 GiB of memory, but this machine has 16.0 GiB "
                   "available")


def test_the_memory_check_never_refuses_where_the_memory_is_unknown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: None)
    memory.check_memory(2**62, "anything")
    assert memory.available_bytes() is None


# -- 2. values beyond float32 ---------------------------------------------------------------------
def test_float64_weights_beyond_float32_are_refused_after_the_cast() -> None:
    g = fsdgraph.Graph()
    x = g.input(2)
    with pytest.raises(GraphError) as info:
        g.linear(x, np.array([[1e39, 0.0], [0.0, 1.0]]))
    assert str(info.value) == ("linear0: weight has 1 values outside the float32 range "
                               "(|x| <= 3.403e+38), the largest 1e+39")
    duplicates = sp.coo_matrix((np.float32([3e38, 3e38]), ([0, 0], [0, 0])), shape=(2, 2))
    with pytest.raises(GraphError) as info:
        g.linear(x, duplicates)  # each fits; their sum does not
    assert str(info.value) == ("linear0: weight has 1 values outside the float32 range "
                               "(|x| <= 3.403e+38), once duplicate entries are summed")
    with pytest.raises(GraphError) as info:
        g.linear(x, np.array([[np.nan, 0.0], [0.0, 1.0]]))
    assert str(info.value) == "linear0: weight has 1 NaN or infinite values"


@pytest.mark.parametrize(("bias", "message"), [
    (1e300, "layer1: bias 1e+300 is outside the float32 range (|x| <= 3.403e+38)"),
    (np.array([0.0, -1e39]), "layer1: bias 1e+39 is outside the float32 range "
                             "(|x| <= 3.403e+38)"),
    (float("nan"), "layer1: bias has NaN or infinite values"),
    ("abc", "layer1: bias must be a number or an array of shape (2,), got str"),
])
def test_a_bias_beyond_float32_is_refused(bias: Any, message: str) -> None:
    with pytest.raises(GraphError) as info:
        fsdgraph.sequential([np.eye(2, dtype=np.float32)], bias=bias)
    assert str(info.value) == message


def test_bias_option_beyond_float32_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    for bias in ("1e300", "nan", "-inf"):
        err = refused(["graphchallenge", "--synthetic", "--layers", "2", f"--bias={bias}",
                       *INPROC], capsys)
        assert err == (f"fsdgraph: error: --bias must be a finite number within the float32 "
                       f"range (|bias| <= 3.403e+38), got {float(bias)}")


def test_an_image_value_beyond_float32_exits_2(tmp_path: Path, weights_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images.tsv"
    images.write_text("1 1 1\n1 2 1e39\n")
    err = refused(files_run(weights_dir, images), capsys)
    assert err == f"fsdgraph: error: {images}:2: value '1e39' overflows float32"


def test_sequential_refuses_what_is_not_a_list_of_weights() -> None:
    with pytest.raises(GraphError) as info:
        fsdgraph.sequential(np.eye(2, dtype=np.float32))  # type: ignore[arg-type]
    assert str(info.value) == "sequential: weights must be a list of weight matrices, got ndarray"
    with pytest.raises(GraphError) as info:
        fsdgraph.sequential([[[1.0]]])  # type: ignore[list-item]
    assert str(info.value) == ("layer1: weight must be a scipy sparse matrix or a numpy array, "
                               "got list")


# -- 3. other refusals ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "1 1 0\n2 2 0.0\n"], ids=["empty", "all-zero"])
def test_a_weights_file_without_a_nonzero_is_refused_naming_it(
        tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "n1024-l1.tsv").write_text(text)
    images = tmp_path / "images.tsv"
    images.write_text("1 1 1\n")
    err = refused(files_run(folder, images), capsys)
    assert err == (f"fsdgraph: error: {folder / 'n1024-l1.tsv'}: no nonzero weights (layer 1 "
                   f"would be all zero, and so would every activation after it); expected lines "
                   f"'row col value'")
    with pytest.raises(InputError, match="no nonzero weights"):
        load_weights(folder, 1024, 1)


@pytest.mark.parametrize("timeout", ["nan", "-1", "0", "inf"])
def test_a_timeout_option_that_never_fires_exits_2(timeout: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["graphchallenge", "--synthetic", "--layers", "2", "--timeout", timeout,
                   *INPROC], capsys)
    assert err == (f"fsdgraph: error: option --timeout: timeout_s must be a positive finite "
                   f"number of seconds, got {float(timeout)}")


@pytest.mark.parametrize(("options", "message"), [
    (["--activation-aware", "-5"], "--activation-aware must be a number of rows >= 1 (0: off), "
                                   "got -5"),
    (["--neurons", "0"], "--neurons must be an integer in [1, 2147483647], got 0"),
    (["--layers", "0"], "--layers must be an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--workers", "0"], "option --workers: workers must be a positive integer, got 0"),
    (["--workers", "2000"], "workers=2000 exceeds --neurons 1024: every worker must own at "
                            "least one neuron of every layer"),
    (["--branching", "0"], "option --branching: branching must be a positive integer, got 0"),
    (["--images", "0"], "--images must be at least 1, got 0"),
    (["--neurons", "1000", "--bias", "-0.3"],
     "neurons must be 16 times a power of two >= 2 (e.g. 1024, 4096, 16384, 65536), got 1000"),
    (["--neurons", "2048"], "no Graph Challenge bias for 2048 neurons; known sizes: 1024 (-0.3), "
                            "4096 (-0.35), 16384 (-0.4), 65536 (-0.45); give --bias"),
])
def test_options_out_of_range_exit_2(options: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["graphchallenge", "--synthetic", "--layers", "2", *options, *INPROC], capsys)
    assert err == f"fsdgraph: error: {message}"


def test_missing_files_are_refused_before_anything_is_loaded(
        tmp_path: Path, weights_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images.tsv"
    err = refused(files_run(weights_dir, images), capsys)
    assert err == (f"fsdgraph: error: {images}: file not found (tried {images}, {images}.gz)")
    images.write_text("1 1 1\n")
    truth = tmp_path / "truth.tsv"
    err = refused([*files_run(weights_dir, images), "--truth", str(truth)], capsys)
    assert err == f"fsdgraph: error: {truth}: file not found (tried {truth}, {truth}.gz)"
    err = refused(files_run(tmp_path / "nowhere", images), capsys)
    assert err == f"fsdgraph: error: --weights {tmp_path / 'nowhere'}: not a directory"


def test_compile_of_no_layers_names_what_is_expected() -> None:
    with pytest.raises(GraphError) as info:
        fsdgraph.compile([], workers=2)
    assert str(info.value) == ("compile: no layers given: expected a Graph or a non-empty list "
                               "of Layer (graph.layers())")
    layers = fsdgraph.sequential([np.eye(4, dtype=np.float32)]).layers()
    other = fsdgraph.sequential([np.ones((3, 2), np.float32)]).layers()
    with pytest.raises(GraphError) as info:
        fsdgraph.compile([*layers, *other], workers=2)
    assert str(info.value) == "compile: layer 1 takes 3 inputs but layer 0 has 4 outputs"
    with pytest.raises(GraphError) as info:
        fsdgraph.compile([np.eye(2)], workers=1)  # type: ignore[list-item]
    assert str(info.value) == "compile: layer 0 must be a Layer (from graph.layers()), got ndarray"


# -- 4. an unwritable --report --------------------------------------------------------------------
def test_an_unwritable_report_path_is_refused_before_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    report = blocker / "run.json"
    err = refused(["graphchallenge", "--synthetic", "--layers", "2", "--report", str(report),
                   *INPROC], capsys)
    assert err == f"fsdgraph: error: --report {report}: {blocker} is not a directory"
    err = refused(["graphchallenge", "--synthetic", "--layers", "2", "--report",
                   str(report / "deeper" / "run.json"), *INPROC], capsys)
    assert err == (f"fsdgraph: error: --report {report / 'deeper' / 'run.json'}: {blocker} is "
                   f"not a directory")
    err = refused(["graphchallenge", "--synthetic", "--layers", "2", "--report", str(tmp_path),
                   *INPROC], capsys)
    assert err == f"fsdgraph: error: --report {tmp_path}: is a directory"


def test_the_report_check_leaves_nothing_behind(tmp_path: Path) -> None:
    check_writable(tmp_path / "a" / "b" / "run.json", "--report")
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "old.json"
    kept.write_text("{}")
    check_writable(kept, "--report")
    assert kept.read_text() == "{}"


# -- 5. hostile run reports -----------------------------------------------------------------------
VALID = {"workers": 1, "layers": 1, "wall_s": 0.5, "requests": {"invoke": 1, "get": 2},
         "per_worker": [{"worker": 0, "duration_s": 0.4}],
         "per_layer": [{"layer": 0, "rows_sent": 0, "bytes_sent": 0, "messages_sent": 0,
                        "compute_s": 0.1, "wait_s": 0.0, "codec_s": 0.0}]}


def hostile(**fields: Any) -> dict[str, Any]:
    return {**VALID, **fields}


HOSTILE: list[tuple[str, Any, str]] = [
    ("a list", [VALID], "not a run report: expected a JSON object, got list "
                        "[{'workers': 1, 'layers': 1, 'wall_s'..."),
    ("workers a string", hostile(workers="two"),
     "report field 'workers' must be an integer, got 'two'"),
    ("workers huge", hostile(workers=10**30),
     "report field 'workers' must be in [0, 10000000], got 1000000000000000000000000000000"),
    ("layers a float", hostile(layers=1.5), "report field 'layers' must be an integer, got 1.5"),
    ("requests a list", hostile(requests=[1, 2]),
     "report field 'requests' must be a mapping of request kind to count, got list [1, 2]"),
    ("a count too large", hostile(requests={"invoke": 1e300}),
     "report field 'requests'['invoke'] is too large: 1e+300 (at most 9007199254740992)"),
    ("a negative count", hostile(requests={"get": -3}),
     "report field 'requests'['get'] must be >= 0, got -3"),
    ("wall_s a string", hostile(wall_s="fast"),
     "report field 'wall_s' must be a finite number, got 'fast'"),
    ("per_layer a dict", hostile(per_layer={"0": {}}),
     "report field 'per_layer' must be a list of objects, got dict {'0': {}}"),
    ("a layer row a number", hostile(per_layer=[7]),
     "report field 'per_layer[0]' must be an object, got int 7"),
    ("a layer without its id", hostile(per_layer=[{"rows_sent": 1}]),
     "report field 'per_layer[0]' has no 'layer'"),
    ("a layer without a printed field", hostile(per_layer=[{"layer": 0}]),
     "report field 'per_layer[0]' has no 'rows_sent'"),
    ("a time that is a list", hostile(per_layer=[{**VALID["per_layer"][0], "wait_s": [1]}]),
     "report field 'per_layer[0].wait_s' must be a finite number, got [1]"),
    ("a negative worker id", hostile(per_worker=[{"worker": -1}]),
     "report field 'per_worker[0].worker' must be in [0, 10000000], got -1"),
    ("a worker id that is null", hostile(per_worker=[{"worker": None}]),
     "report field 'per_worker[0].worker' must be an integer, got None"),
    ("a duration that is a dict", hostile(per_worker=[{"worker": 0, "duration_s": {}}]),
     "report field 'per_worker[0].duration_s' must be a finite number, got {}"),
    ("worker requests a string", hostile(per_worker=[{"worker": 0, "requests": "many"}]),
     "report field 'per_worker[0].requests' must be a mapping of request kind to count, "
     "got str 'many'"),
    ("a grid that is a list", hostile(per_worker_layer=[]),
     "report field 'per_worker_layer' must be an object, got list []"),
    ("a grid cell that is text", hostile(per_worker_layer={"started_at": [["x"]]}),
     "report field 'per_worker_layer.started_at[0][0]' must be a finite number, got 'x'"),
]


def test_the_valid_report_of_the_table_is_billed(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(VALID))
    assert main(["report", str(path)]) == 0
    assert "total" in capsys.readouterr().out


@pytest.mark.parametrize(("report", "message"), [(r, m) for _, r, m in HOSTILE],
                         ids=[name for name, _, _ in HOSTILE])
def test_a_hostile_report_names_the_field_and_exits_2(
        tmp_path: Path, report: Any, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(report))
    assert refused(["report", str(path)], capsys) == f"fsdgraph: error: {path}: {message}"


def test_report_json_that_python_cannot_hold_exits_2(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.json"
    for text, message in (("[" * 100_000, "not a JSON run report: nested too deeply"),
                          (json.dumps(VALID).replace("0.5", "NaN"),
                           "report field 'wall_s' must be a finite number, got nan"),
                          ('{"workers": 1' + "0" * 5000 + "}", "not a JSON run report: ")):
        path.write_text(text)
        assert refused(["report", str(path)], capsys).startswith(
            f"fsdgraph: error: {path}: {message}")


def test_report_plots_into_an_existing_file_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(VALID))
    plots = tmp_path / "plots.png"
    plots.write_text("")
    assert refused(["report", str(path), "--plots", str(plots)], capsys) == (
        f"fsdgraph: error: --plots {plots}: exists and is not a directory (give a folder for "
        f"the three PNGs)")
    assert refused(["report", str(path), "--plots", str(tmp_path / "out")], capsys) == (
        f"fsdgraph: error: {path}: cannot plot: missing channel, partitioner, per_worker_layer")
    assert refused(["report", str(path), "--memory-mb", "64"], capsys) == (
        "fsdgraph: error: --memory-mb must be in [128, 10240] (Lambda's memory sizes), got 64")


# -- 6. channel settings and empty object edges ---------------------------------------------------
@pytest.mark.parametrize(("fields", "message"), [
    ({"auto_object_above_bytes": -1}, "channel auto_object_above_bytes must be an integer >= 0, "
                                      "got -1"),
    ({"topics": -2}, "channel topics must be an integer >= 0, got -2"),
    ({"peer_timeout_s": math.nan}, "channel peer_timeout_s must be a positive finite number of "
                                   "seconds, got nan"),
    ({"poll_wait_s": math.inf}, "channel poll_wait_s must be a positive finite number of "
                                "seconds, got inf"),
    ({"ready_timeout_s": 0.0}, "channel ready_timeout_s must be a positive finite number of "
                               "seconds, got 0.0"),
    ({"object_get_rate_s": math.nan}, "channel object_get_rate_s must be a finite number >= 0, "
                                      "got nan"),
    ({"object_poll_min_s": 1.0, "object_poll_max_s": 0.5},
     "channel object_poll_min_s (1.0) must not exceed object_poll_max_s (0.5)"),
])
def test_channel_config_refuses_what_never_works(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ChannelConfig(**fields)
    assert str(info.value) == message


@pytest.mark.parametrize(("fields", "message"), [
    ({"timeout_s": math.nan}, "timeout_s must be a positive finite number of seconds, got nan"),
    ({"stall_timeout_s": math.inf}, "stall_timeout_s must be a positive finite number of "
                                    "seconds, got inf"),
    ({"progress_interval_s": -1.0}, "progress_interval_s must be a positive finite number of "
                                    "seconds, got -1.0"),
    ({"branching": 0}, "branching must be an integer >= 1, got 0"),
])
def test_run_config_refuses_timeouts_that_never_fire(fields: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ConfigError) as info:
        fsdgraph.RunConfig(**fields)
    assert str(info.value) == message


def test_an_empty_edge_completes_its_layer_on_the_auto_channel() -> None:
    """Sent: an empty block is its count-0 marker on the queue, never an object of nothing,
    whatever the line. Received: a pointer to an object of no chunks (as a sender that did
    write one would send) completes the edge too."""
    from fsdgraph.backends.local import LocalBackend
    from fsdgraph.channels import WorkerContext
    from fsdgraph.channels.auto import AutoChannel
    from fsdgraph.channels.base import OutChunk
    from fsdgraph.codec import BlockCodec
    from fsdgraph.integrity import RunKey, checksum
    from fsdgraph.kernels import Block
    from fsdgraph.metrics import WorkerMetrics
    from fsdgraph.resources import RunNames
    from fsdgraph.sealed import seal
    from fsdgraph.transport import Entry

    config = ChannelConfig(peer_timeout_s=3, poll_wait_s=0.05, auto_object_above_bytes=1)
    names = RunNames("guards", key=RunKey.generate())
    empty = Block(np.zeros(0, np.int32), dense_t=np.zeros((4, 0), np.float32))

    async def main_() -> None:
        async with contextlib.AsyncExitStack() as stack:
            services = await stack.enter_async_context(LocalBackend(warm=False).session(names))
            await AutoChannel.create_resources(services, names, 2, config)
            chans = []
            for w in range(2):
                attached = await stack.enter_async_context(
                    LocalBackend.attach(services.description, names))
                chans.append(AutoChannel(WorkerContext(attached, names, w, 2, config,
                                                       WorkerMetrics(w), BlockCodec())))
            ch0, ch1 = chans
            try:
                await ch0.send(1, [(1, empty)])
                assert [c async for c in ch1.receive(1, [0])] == []
                assert ch0.metrics.current.channel["edges_via_queue"] == 1
                assert await services.objects.list(names.prefix + "x/") == []

                key = names.exchange_key(2, 0, 1)
                await services.objects.put(key, seal(names, key, []))
                pointer = ch0._attributes(OutChunk(2, 0, 1, 0, 0, b""), checksum(key.encode()),
                                          "pointer")
                await ch0._publish_entries([Entry(key, pointer)])
                assert [c async for c in ch1.receive(2, [0])] == []
            finally:
                for chan in chans:
                    await chan.close()
                await AutoChannel.delete_resources(services, names, 2, config)
                for s in (services, *(c.services for c in chans)):
                    closer = getattr(s.messages, "close", None)
                    if callable(closer):
                        closer()

    asyncio.run(main_())


# -- 7. settings from the file and the environment ------------------------------------------------
def test_an_option_given_wins_without_reading_the_environment(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FSDGRAPH_WORKERS", "abc")
    assert load_settings(None, workers=2).workers == 2
    code = main(["plan", "--synthetic", "--layers", "2", "--workers", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["workers"] == 2
    assert refused(["plan", "--synthetic", "--layers", "2"], capsys) == (
        "fsdgraph: error: environment variable FSDGRAPH_WORKERS: workers must be int, got 'abc'")


@pytest.mark.parametrize(("env", "message"), [
    ({"FSDGRAPH_TIMEOUT_S": "nan"}, "environment variable FSDGRAPH_TIMEOUT_S: timeout_s must be "
                                    "a positive finite number of seconds, got nan"),
    ({"FSDGRAPH_STALL_TIMEOUT_S": "inf"}, "environment variable FSDGRAPH_STALL_TIMEOUT_S: "
                                          "stall_timeout_s must be a positive finite number of "
                                          "seconds, got inf"),
    ({"FSDGRAPH_PEER_TIMEOUT_S": "-5"}, "environment variable FSDGRAPH_PEER_TIMEOUT_S: "
                                        "peer_timeout_s must be a positive finite number of "
                                        "seconds, got -5.0"),
    ({"FSDGRAPH_TOPICS": "-1"}, "environment variable FSDGRAPH_TOPICS: topics must be an "
                                "integer >= 0, got -1"),
])
def test_a_bad_environment_setting_names_its_variable(
        env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    err = refused(["graphchallenge", "--synthetic", "--layers", "2", *INPROC], capsys)
    assert err == f"fsdgraph: error: {message}"


def test_a_bad_config_file_setting_names_the_file_table_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    for text, message in (("[run]\nstall_timeout_s = nan\n",
                           "stall_timeout_s must be a positive finite number of seconds, got nan"),
                          ("[run]\npeer_timeout_s = -inf\n",
                           "peer_timeout_s must be a positive finite number of seconds, got -inf"),
                          ("[run]\nworkers = 0\n", "workers must be a positive integer, got 0")):
        config.write_text(text)
        err = refused(["graphchallenge", "--synthetic", "--layers", "2", "--config", str(config),
                       *INPROC], capsys)
        assert err == f"fsdgraph: error: {config} [run]: {message}"


# -- 8. AWS: a missing deployment, a bad region or endpoint ---------------------------------------
def aws_config(path: Path, server: Any, deployment: str, **aws: str) -> Path:
    from fsdgraph.backends.aws.config import SERVICES

    endpoints = "".join(f'{s} = "{aws.pop(s, server.url)}"\n' for s in SERVICES)
    table = "".join(f'{k} = "{v}"\n' for k, v in {"region": server.region,
                                                 "deployment": deployment, **aws}.items())
    path.write_text(f"[aws]\n{table}[aws.endpoints]\n{endpoints}")
    return path


def test_aws_run_without_its_bucket_says_to_deploy(
        tmp_path: Path, moto_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("aiobotocore", reason="pip install 'fsdgraph[aws]'")
    import boto3

    from fsdgraph.backends.aws.config import load_aws_settings
    from fsdgraph.backends.aws.deploy import deploy, teardown

    config = aws_config(tmp_path / "aws.toml", moto_server, "nobucket")
    settings = load_aws_settings(config, environ={})
    d = deploy(settings, dependencies=False, say=lambda _: None)
    try:
        s3 = boto3.client("s3", region_name=moto_server.region, endpoint_url=moto_server.url)
        for item in s3.list_objects_v2(Bucket=d.bucket).get("Contents", []):
            s3.delete_object(Bucket=d.bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=d.bucket)
        err = refused(["graphchallenge", "--backend", "aws", "--config", str(config),
                       "--synthetic", "--layers", "2", "--images", "10", "--no-progress"], capsys)
        assert err == (f"fsdgraph: error: bucket '{d.bucket}' does not exist in "
                       f"{moto_server.region} (NoSuchBucket): run `fsdgraph deploy` first (it "
                       f"creates the function, role and bucket of deployment 'nobucket')")
    finally:
        teardown(settings, say=lambda _: None)


def test_aws_bad_region_and_endpoint_name_the_setting_and_its_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("aiobotocore", reason="pip install 'fsdgraph[aws]'")
    from fsdgraph.testing.aws_servers import CREDENTIALS, free_port

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    nowhere = f"http://127.0.0.1:{free_port()}"
    server = type("Server", (), {"url": nowhere, "region": "us-east-1"})()
    run = ["graphchallenge", "--backend", "aws", "--synthetic", "--layers", "2", "--images", "10",
           "--no-progress", "--config"]
    config = aws_config(tmp_path / "region.toml", server, "demo", region="not a region!")
    assert refused([*run, str(config)], capsys) == (
        f"fsdgraph: error: aws region = 'not a region!' (from {config} [aws]): not a region "
        f"name (expected one like us-east-1)")
    config = aws_config(tmp_path / "url.toml", server, "demo", s3="htp:/127.0.0.1")
    assert refused([*run, str(config)], capsys) == (
        f"fsdgraph: error: aws endpoints.s3 = 'htp:/127.0.0.1' (from {config} [aws.endpoints]): "
        f"expected http://HOST[:PORT] or https://HOST[:PORT], got 'htp:/127.0.0.1'")
    config = aws_config(tmp_path / "unreachable.toml", server, "demo")
    assert refused([*run, str(config)], capsys) == (
        f'fsdgraph: error: caller identity: EndpointConnectionError: Could not connect to the '
        f'endpoint URL: "{nowhere}/": check aws endpoints.sts = \'{nowhere}\' (from {config} '
        f'[aws.endpoints]), and that the service is reachable from here')
    monkeypatch.setenv("AWS_REGION", "bad region")
    assert refused([*run, str(config)], capsys) == (
        "fsdgraph: error: aws region = 'bad region' (from environment variable AWS_REGION): "
        "not a region name (expected one like us-east-1)")
