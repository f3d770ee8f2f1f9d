"""The whole AWS path through the command line, against local AWS-API servers: ``fsdgraph deploy``,
``fsdgraph graphchallenge --backend aws`` on the official network and images (19 categories,
4 workers, each channel), ``fsdgraph teardown``.

Servers (``conftest.py``): ``moto_server`` answers S3, SNS, SQS, STS, IAM, Logs and Lambda's
control plane; ``lambda_server`` answers Lambda ``Invoke`` by running the deployed handler
(``fsdgraph.worker.handler``) in a subprocess and proxies every other Lambda call to moto. The
workers those subprocesses run invoke their children through the same endpoint, exactly as
functions do on AWS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from fsdgraph.backends.aws import AwsBackend, load_aws_settings
from fsdgraph.backends.aws.deploy import teardown
from fsdgraph.cli import EXIT_INPUT, EXIT_PASSED, EXIT_RUN, main
from fsdgraph.testing.conformance import BackendSuite, ChannelExchangeSuite, ControlPlaneSuite

#: Put in the environment of the command line: it must never appear in what it prints.
SECRET = "fsdgraph-test-secret-never-printed"


def write_config(path: Path, moto: Any, lam: Any, deployment: str, stall_s: int = 60) -> Path:
    endpoints = {s: moto.url for s in ("s3", "sns", "sqs", "sts", "iam", "logs")}
    endpoints["lambda"] = lam.url
    path.write_text(
        f'[aws]\nregion = "{moto.region}"\ndeployment = "{deployment}"\ntimeout_s = 900\n'
        "[aws.endpoints]\n" + "".join(f'{k} = "{v}"\n' for k, v in endpoints.items())
        # A worker that dies is found in seconds, not the default two minutes.
        # The run's timeout within the function's, as pre-flight demands.
        + f"[run]\ntimeout_s = 600\nstall_timeout_s = {stall_s}\npeer_timeout_s = 60\n")
    return path


@pytest.fixture(scope="module")
def deployed(moto_server: Any, lambda_server: Any,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A deployment made by ``fsdgraph deploy`` (code-only package: the local Lambda endpoint
    runs the handler from this environment); removed at the end."""
    config = write_config(tmp_path_factory.mktemp("aws") / "config.toml", moto_server,
                          lambda_server, "e2e")
    assert main(["deploy", "--config", str(config), "--no-dependencies"]) == EXIT_PASSED
    yield config
    teardown(load_aws_settings(config), say=lambda _: None)


def official_args(data: Path) -> list[str]:
    return ["graphchallenge", "--weights", str(data / "neuron1024"),
            "--images", str(data / "sparse-images-1024-first1200.tsv.gz"),
            "--truth", str(data / "neuron1024-l120-categories-first1200.tsv"),
            "--workers", "4", "--backend", "aws", "--no-progress"]


@pytest.mark.parametrize("channel", ["queue", "object", "queue-direct"])
def test_graphchallenge_on_aws_reproduces_the_official_categories(
        deployed: Path, official_data: Path, lambda_server: Any, tmp_path: Path, channel: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    report_path = tmp_path / "run.json"
    args = [*official_args(official_data), "--config", str(deployed),
            "--channel", channel.removesuffix("-direct"), "--report", str(report_path)]
    if channel.endswith("-direct"):
        args.append("--direct")
    code = main(args)
    out, err = capsys.readouterr()
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(lambda_server.log_dir.glob("*.log")))
    assert code == EXIT_PASSED, f"{out}\n{err}\n{logs}"
    assert "ok   categories equal the official truth (19)" in out
    assert SECRET not in out + err
    report = json.loads(report_path.read_text())
    assert (report["backend"], report["workers"], report["categories"]) == ("aws", 4, 19)
    # One invocation per worker, through the tree, and one per relaunch.
    assert report["requests"]["invoke"] == 4 + report["relaunches"] + report["continuations"]
    if channel == "queue":
        assert report["requests"]["publish"] > 0 and report["requests"].get("send", 0) > 0
    if channel == "queue-direct":
        assert report["requests"].get("publish", 0) == 0
    if channel == "object":
        assert report["requests"]["put"] > 4 * 120


def test_run_without_a_deployment_fails_naming_the_function(
        moto_server: Any, lambda_server: Any, official_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "config.toml", moto_server, lambda_server, "nothing-here")
    boto3.client("s3", region_name=moto_server.region, endpoint_url=moto_server.url
                 ).create_bucket(Bucket=f"nothing-here-123456789012-{moto_server.region}")
    code = main([*official_args(official_data), "--layers", "2", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT, err  # refused by the pre-flight check, before anything is made
    assert ("function 'nothing-here-worker' does not exist in us-east-1: deploy it first with "
            "`fsdgraph deploy`") in err
    assert "Traceback" not in err
    assert not queues_named(moto_server, "nothing-here-")
    teardown(load_aws_settings(config), say=lambda _: None)


def test_a_worker_that_never_reports_fails_the_run_by_name(
        moto_server: Any, lambda_server: Any, official_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The function's handler cannot be imported, so no worker ever reports (Lambda does not
    retry them): Lambda's on-failure record, through the deployment's failures queue, fails the
    run naming a worker and the cause, long before the stall timeout."""
    config = write_config(tmp_path / "config.toml", moto_server, lambda_server, "stall",
                          stall_s=600)
    assert main(["deploy", "--config", str(config), "--no-dependencies"]) == EXIT_PASSED
    lam = boto3.client("lambda", region_name=moto_server.region, endpoint_url=moto_server.url)
    lam.update_function_configuration(FunctionName="stall-worker",
                                      Handler="fsdgraph.no_such_module.handler")
    try:
        code = main([*official_args(official_data), "--layers", "2", "--config", str(config)])
        err = capsys.readouterr().err
        assert code == EXIT_RUN, err
        assert re.search(r"worker (\d) failed at layer 0: the function invocation of worker \1 "
                         r"failed: Runtime.ImportModuleError: Unable to import module "
                         r"'fsdgraph.no_such_module'", err), err
    finally:
        teardown(load_aws_settings(config), say=lambda _: None)
    assert not queues_named(moto_server, "stall-")


def queues_named(server: Any, prefix: str) -> list[str]:
    """Queues left with names starting with ``prefix`` (the run's cleanup removes them)."""
    sqs = boto3.client("sqs", region_name=server.region, endpoint_url=server.url)
    return list(sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []))


def test_cli_deploy_dry_run_and_teardown(moto_server: Any, lambda_server: Any, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "config.toml", moto_server, lambda_server, "cli-life")
    assert main(["deploy", "--config", str(config), "--dry-run"]) == EXIT_PASSED
    out, err = capsys.readouterr()
    assert json.loads(out)["dry_run"] is True
    assert "would create function cli-life-worker" in err
    lam = boto3.client("lambda", region_name=moto_server.region, endpoint_url=moto_server.url)
    assert not [f for f in lam.list_functions()["Functions"]
                if f["FunctionName"].startswith("cli-life")]

    assert main(["deploy", "--config", str(config), "--print-policy", "worker"]) == EXIT_PASSED
    policy = json.loads(capsys.readouterr().out)
    assert all("*" not in a for s in policy["Statement"] for a in s["Action"])

    assert main(["deploy", "--config", str(config), "--no-dependencies"]) == EXIT_PASSED
    capsys.readouterr()
    assert lam.get_function(FunctionName="cli-life-worker")["Configuration"]["Handler"] == \
        "fsdgraph.worker.handler"
    assert main(["teardown", "--config", str(config)]) == EXIT_PASSED
    removed = json.loads(capsys.readouterr().out)["removed"]
    assert {r["kind"] for r in removed} == {"bucket", "role", "function", "queue"}
    assert not [f for f in lam.list_functions()["Functions"]
                if f["FunctionName"].startswith("cli-life")]


def test_deploy_with_a_bad_config_exits_2_naming_the_field(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[aws]\nmemory_mb = "huge"\n')
    assert main(["deploy", "--config", str(config), "--dry-run"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert f"{config} [aws]: memory_mb must be int, got 'huge'" in err


def test_without_the_aws_extra_the_cli_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "aiobotocore", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "aiobotocore.session", None)
    for name in [m for m in sys.modules if m.startswith("fsdgraph.backends.aws")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["deploy", "--dry-run"]) == EXIT_INPUT
    assert "deploy needs the aws extra: pip install 'fsdgraph[aws]'" in capsys.readouterr().err
    assert main(["graphchallenge", "--synthetic", "--layers", "2", "--backend", "aws"]) == \
        EXIT_INPUT
    err = capsys.readouterr().err
    assert "backend 'aws' cannot be loaded" in err and "pip install 'fsdgraph[aws]'" in err


def test_deploy_with_a_missing_package_exits_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[aws]\ndeployment = "nopkg"\n')
    missing = tmp_path / "missing.zip"
    assert main(["deploy", "--config", str(config), "--package", str(missing)]) == EXIT_INPUT
    assert f"--package {missing}: no such file" in capsys.readouterr().err


class TestAwsConformance(BackendSuite, ControlPlaneSuite, ChannelExchangeSuite):
    """The conformance kit on the AWS backend: SNS/SQS and S3 on moto, functions run by the
    local Lambda endpoint."""

    channels = ("queue", "object", "auto")

    @pytest.fixture
    def backend(self, deployed: Path) -> AwsBackend:
        return AwsBackend(load_aws_settings(deployed))
