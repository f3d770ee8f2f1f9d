"""The command line: exit codes, messages for bad input, reports."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fsdgraph.cli import main

SMALL = ["--synthetic", "--neurons", "1024", "--layers", "12", "--images", "60"]


def test_help_lists_commands_and_exit_codes() -> None:
    out = subprocess.run([sys.executable, "-m", "fsdgraph.cli", "graphchallenge", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--weights", "--images", "--truth", "--neurons", "--layers", "--bias",
                   "--workers", "--channel", "--backend", "--partitioner", "--report",
                   "--compare-serial", "--synthetic", "--seed"):
        assert option in out
    assert "exit codes" in out


def test_synthetic_run_passes_and_writes_report(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "out" / "run.json"
    code = main(["graphchallenge", *SMALL, "--workers", "3", "--channel", "object",
                 "--report", str(report),
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip().endswith("PASSED")
    data = json.loads(report.read_text())
    for key in ("passed", "categories", "wall_s", "serial_s", "workers", "channel", "bytes_sent",
                "messages_sent", "requests", "per_layer"):
        assert key in data
    assert data["passed"] is True and data["workers"] == 3 and data["channel"] == "object"
    assert len(data["per_layer"]) == 12 and data["bytes_sent"] > 0


def test_wrong_truth_fails_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       official_data: Path) -> None:
    truth = tmp_path / "truth.tsv"
    truth.write_text("1\n2\n")
    code = main(["graphchallenge", "--weights", str(official_data / "neuron1024"), "--layers", "6",
                 "--images", str(official_data / "sparse-images-1024-first1200.tsv.gz"),
                 "--truth", str(truth), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL categories equal the official truth (2)" in out
    assert out.strip().endswith("FAILED")


def test_malformed_weights_exit_2_with_file_and_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w"
    weights.mkdir()
    with gzip.open(weights / "n1024-l1.tsv.gz", "wt") as f:
        f.write("1\t1\t0.0625\n2\t1\n")
    images = tmp_path / "images.tsv"
    images.write_text("1\t1\t1\n")
    code = main(["graphchallenge", "--weights", str(weights), "--images", str(images),
                 "--layers", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "n1024-l1.tsv.gz:2:" in err and "Traceback" not in err


def test_missing_images_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["graphchallenge", "--synthetic", "--layers", "2", "--images", "many"])
    assert code == 2
    assert "--images must be a count with --synthetic, got 'many'" in capsys.readouterr().err
    code = main(["graphchallenge", "--layers", "2"])
    assert code == 2
    assert "--weights DIR is required" in capsys.readouterr().err


def test_unknown_partitioner_and_bad_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graphchallenge", *SMALL, "--partitioner", "nope"]) == 2
    known = "known: contiguous, hypergraph, random"
    assert f"unknown partitioner 'nope'; {known}" in capsys.readouterr().err
    assert main(["graphchallenge", *SMALL, "--workers", "0"]) == 2
    assert "workers must be a positive integer, got 0" in capsys.readouterr().err


def test_usage_error_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "fsdgraph.cli", "graphchallenge", "--channel",
                           "carrier-pigeon"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice: 'carrier-pigeon'" in proc.stderr


def test_settings_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[run]\nworkers = 2\nchannel = "object"\n')
    monkeypatch.setenv("FSDGRAPH_CONFIG_FILE", str(config))
    monkeypatch.setenv("FSDGRAPH_WORKERS", "3")
    assert main(["plan", "--synthetic", "--layers", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["workers"] == 3  # the environment beats the file
    config.write_text("[run]\nworkers = 'many'\n")
    monkeypatch.delenv("FSDGRAPH_WORKERS")
    assert main(["plan", "--synthetic", "--layers", "3"]) == 2
    assert f"{config} [run]: workers must be int, got 'many'" in capsys.readouterr().err


def test_report_command_bill_table_and_plots(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`fsdgraph report` prints the itemised bill (its lines add up to the total) and the
    per-layer table, and writes the three PNGs."""
    run = tmp_path / "run.json"
    assert main(["graphchallenge", *SMALL, "--workers", "3", "--report", str(run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    plots = tmp_path / "plots"
    assert main(["report", str(run), "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    assert "Lambda" in out and "SNS" in out and "total" in out
    assert len([line for line in out.splitlines() if line[:5].strip().isdigit()]) == 12
    for name in ("bytes_per_layer.png", "time_per_layer.png", "timeline.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(run.read_text())
    items = data["bill"]["items"]
    assert abs(sum(i["cost"] for i in items) - data["bill"]["total"]) < 1e-12


def test_report_command_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["report", str(bad)]) == 2
    assert f"{bad}: not a JSON run report" in capsys.readouterr().err
    bad.write_text('{"workers": 2}')
    assert main(["report", str(bad)]) == 2
    assert "not a run report: missing layers, per_layer, per_worker, requests" in \
        capsys.readouterr().err


def test_prices_file_sets_the_bill_and_a_bad_one_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text("[prices]\ns3_get_per_k = 4.0\n")  # 10 000 times the list price
    reports = {}
    for name, extra in (("list", []), ("dear", ["--prices", str(prices)])):
        reports[name] = tmp_path / f"{name}.json"
        code = main(["graphchallenge", *SMALL, "--channel", "object", "--no-progress",
                     "--report", str(reports[name]), *extra])
        assert code == 0, capsys.readouterr().out
    bills = {k: json.loads(p.read_text())["bill"] for k, p in reports.items()}
    assert bills["dear"]["prices"]["s3_get_per_k"] == 4.0
    assert bills["dear"]["total"] > 100 * bills["list"]["total"]
    monkeypatch.setenv("FSDGRAPH_PRICES", str(tmp_path / "missing.toml"))
    assert main(["graphchallenge", *SMALL, "--no-progress"]) == 2
    assert "missing.toml" in capsys.readouterr().err


def test_inproc_backend_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graphchallenge", *SMALL, "--backend", "inproc", "--channel", "object",
                 "--no-progress"]) == 0
    assert "inproc backend" in capsys.readouterr().out
    # No --channel: the backend's own default (it has no message service for ``queue``).
    assert main(["graphchallenge", *SMALL, "--backend", "inproc", "--no-progress"]) == 0
    assert "inproc backend, object channel" in capsys.readouterr().out
    code = main(["graphchallenge", *SMALL, "--backend", "inproc", "--channel", "queue",
                 "--no-progress"])
    assert code == 2
    assert ("channel 'queue' needs messages, which backend 'inproc' does not provide"
            in capsys.readouterr().err)
