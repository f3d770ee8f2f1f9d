"""The worker as a Lambda container image (``fsdgraph deploy --image``): its build context, the
numba cache it carries, the docker and ECR path, and functions deployed from an image.

No test reaches PyPI, Docker Hub or AWS: pip downloads fake wheels of the real names from a
folder (its own configuration set aside), docker is either absent from PATH or a script that
records what it is asked, and ECR, Lambda and the rest are the local servers of ``conftest.py``.
The numba cache is checked as the image uses it: the context's code is compiled by the
Dockerfile's own build step, then loaded through the image's entrypoint from another folder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from fsdgraph.backends.aws import load_aws_settings
from fsdgraph.backends.aws.config import AwsSettings
from fsdgraph.backends.aws.deploy import Deployment, teardown
from fsdgraph.backends.aws.image import (
    CACHE_SEED,
    IMAGE_DEPENDENCIES,
    MARKER,
    RUNTIME_CACHE,
    ImageContext,
    ImagePush,
    docker_commands,
    dockerfile,
    entrypoint_script,
    manual_steps,
    write_context,
)
from fsdgraph.backends.aws.package import DEFAULT_DEPENDENCIES, HANDLER, code_files
from fsdgraph.cli import EXIT_INPUT, EXIT_PASSED, main
from fsdgraph.errors import ConfigError

ACCOUNT = "123456789012"
#: What moto's ECR answers as the password of ``get_authorization_token``.
MOTO_PASSWORD = f"{ACCOUNT}-auth-token"
#: The image's dependencies as fake wheels, at their lowest allowed versions.
FAKE_VERSIONS = {"numpy": "1.24", "scipy": "1.10", "msgpack": "1.0", "lz4": "4.0",
                 "aiobotocore": "2.5", "numba": "0.59"}


def _wheel(folder: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel of ``name``."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 .encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{dist}/RECORD"]).encode()
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for arcname, data in files.items():
            zf.writestr(arcname, data)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for name, version in FAKE_VERSIONS.items():
        _wheel(folder, name, version)
    return folder


@pytest.fixture
def offline_pip(wheels: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip, in the processes fsdgraph starts, sees only the fake wheels: no index, none of this
    machine's pip configuration."""
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels


@pytest.fixture
def context(offline_pip: Path, tmp_path: Path) -> ImageContext:
    return write_context(tmp_path / "image")


def _env_block(text: str) -> dict[str, str]:
    """The variables of the Dockerfile's ENV instruction (continued lines joined)."""
    match = re.search(r"^ENV ((?:.*\\\n)*.*)$", text, re.MULTILINE)
    assert match is not None, text
    return dict(word.split("=", 1) for word in shlex.split(match.group(1).replace("\\\n", " ")))


def _run_step(text: str, marker: str) -> str:
    """The shell command of the Dockerfile's RUN instruction that contains ``marker``."""
    for match in re.finditer(r"^RUN ((?:.*\\\n)*.*)$", text, re.MULTILINE):
        if marker in match.group(1):
            return match.group(1).replace("\\\n", " ")
    raise AssertionError(f"no RUN step with {marker!r}:\n{text}")


# -- the context ----------------------------------------------------------------------------------
def test_context_holds_fsdgraphs_code_and_installs_numba(context: ImageContext) -> None:
    root = context.path
    code = sorted(p.relative_to(root / "code").as_posix()
                  for p in (root / "code").rglob("*") if p.is_file())
    assert code == sorted(code_files())  # the zip's selection, in the installed layout
    assert "fsdgraph/kernels/fused.py" in code and "fsdgraph/worker.py" in code
    assert not [n for n in code if n.startswith("fsdgraph/testing/") or n == "fsdgraph/cli.py"]
    assert (root / "code/fsdgraph/kernels/fused.py").read_bytes() == \
        code_files()["fsdgraph/kernels/fused.py"].read_bytes()

    assert (*DEFAULT_DEPENDENCIES, "numba>=0.59") == IMAGE_DEPENDENCIES
    assert context.requirements == tuple(f"{n}=={v}" for n, v in sorted(FAKE_VERSIONS.items()))
    pins = (root / "requirements.txt").read_text().splitlines()
    numba = [p for p in pins if p.startswith("numba==")]
    assert numba and re.fullmatch(r"numba==0\.59 --hash=sha256:[0-9a-f]{64}", numba[0])
    assert (root / "wheels/numba-0.59-py3-none-any.whl").is_file()
    assert (root / "Dockerfile").read_text() == dockerfile("x86_64")
    assert (root / "entrypoint.sh").read_text() == entrypoint_script()


@pytest.mark.parametrize(("architecture", "platform", "cpu"),
                         [("x86_64", "linux/amd64", "x86-64-v3"),
                          ("arm64", "linux/arm64", "neoverse-n1")])
def test_dockerfile_per_architecture(architecture: str, platform: str, cpu: str) -> None:
    text = dockerfile(architecture)
    lines = text.splitlines()
    assert "FROM public.ecr.aws/lambda/python:3.11" in lines
    assert f"--platform {platform}" in text
    assert _env_block(text) == {"NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": "",
                                "NUMBA_CACHE_DIR": "/tmp/numba-cache", "FSDGRAPH_KERNEL": "numba"}
    install = _run_step(text, "pip install")
    assert "--no-index" in install and "--require-hashes" in install
    assert '--target "${LAMBDA_TASK_ROOT}" -r /tmp/requirements.txt' in install
    warm = _run_step(text, "fsdgraph.kernels.fused")
    assert f'NUMBA_CACHE_DIR={CACHE_SEED} python -c "import fsdgraph.kernels.fused"' in warm
    assert lines[-2:] == ['ENTRYPOINT ["/bin/sh", "/opt/fsdgraph/entrypoint.sh"]',
                          f'CMD ["{HANDLER}"]']
    order = [next(i for i, line in enumerate(lines) if line.startswith(start))
             for start in ("FROM", "ENV", "RUN --mount", "COPY code/", "RUN find", "ENTRYPOINT")]
    assert order == sorted(order)  # dependencies and code in place before the kernels compile


def test_context_is_written_again_with_the_same_tag(context: ImageContext) -> None:
    again = write_context(context.path)
    assert again.tag == context.tag and len(context.tag) == 20
    assert (context.path / MARKER).read_text() == f"{context.tag}\n"
    arm = write_context(context.path, architecture="arm64")
    assert arm.tag != context.tag and arm.platform == "linux/arm64"


def test_context_refuses_a_foreign_folder_an_unknown_python_and_pips_failure(
        offline_pip: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError) as caught:
        write_context(foreign)
    assert str(caught.value) == (f"{foreign} is not empty and not an image context fsdgraph "
                                 "wrote: choose another folder")
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError) as caught:
        write_context(tmp_path / "x", python_version="3.9")
    assert str(caught.value) == ("no Lambda base image known for Python '3.9'; known: 3.10, "
                                 "3.11, 3.12, 3.13")
    with pytest.raises(ConfigError) as caught:
        write_context(tmp_path / "x", architecture="sparc")
    assert "unknown Lambda architecture 'sparc'" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        write_context(tmp_path / "x", dependencies=("not-a-wheel-here",))
    message = str(caught.value)
    assert message.startswith("pip could not download not-a-wheel-here for the image (CPython "
                              "3.11, manylinux_2_26_x86_64):")
    assert "No matching distribution" in message
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half context


def test_kernels_compiled_by_the_build_are_loaded_through_the_entrypoint(
        context: ImageContext, tmp_path: Path) -> None:
    """The build step of the Dockerfile compiles the kernels into one folder; the entrypoint,
    in the function's environment, copies them to NUMBA_CACHE_DIR and the handler's module
    loads them from there without compiling anything."""
    task = tmp_path / "task"  # LAMBDA_TASK_ROOT: the context's code, as COPY puts it
    subprocess.run(["cp", "-R", f"{context.path}/code/.", str(task)], check=True)
    seed, cache = tmp_path / "seed", tmp_path / "cache"
    text = dockerfile("x86_64", seed=str(seed))
    image_env = _env_block(text)
    env = {**os.environ, **image_env, "LAMBDA_TASK_ROOT": str(task),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    build = subprocess.run(["sh", "-c", _run_step(text, "fsdgraph.kernels.fused")], cwd=task,
                           env=env, capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr
    assert list(seed.rglob("fused._sparse_serial-*.nbc")), list(seed.rglob("*"))

    runtime = tmp_path / "runtime.sh"  # Lambda's runtime: imports the handler's module
    runtime.write_text('#!/bin/sh\nexec python -c "import importlib, sys; '
                       "module = importlib.import_module(sys.argv[1].rpartition('.')[0]); "
                       "import fsdgraph.kernels.fused as f; print(f.__file__)\" \"$@\"\n")
    entrypoint = tmp_path / "entrypoint.sh"
    runtime.chmod(0o755)
    entrypoint.write_text(entrypoint_script(str(seed), str(runtime)))
    assert image_env["NUMBA_CACHE_DIR"] == RUNTIME_CACHE  # the function's; here a folder of ours
    run = subprocess.run(["sh", str(entrypoint), HANDLER], cwd=task, capture_output=True,
                         text=True, check=False,
                         env={**env, "NUMBA_CACHE_DIR": str(cache), "NUMBA_DEBUG_CACHE": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == str(task / "fsdgraph/kernels/fused.py")
    lines = (run.stdout + run.stderr).splitlines()
    loaded = [line for line in lines if "data loaded from" in line]
    for kernel in ("_sparse_serial", "_dense_serial"):
        assert [line for line in loaded if f"fused.{kernel}-" in line and str(cache) in line], \
            lines
    assert not [line for line in lines if "saved to" in line], lines  # nothing compiled


# -- docker and ECR -------------------------------------------------------------------------------
def _push(context: ImageContext) -> ImagePush:
    return ImagePush(context, "demo-worker", f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com",
                     "eu-west-1")


def test_docker_commands_build_tag_login_and_push(tmp_path: Path) -> None:
    context = ImageContext(tmp_path / "ctx", "arm64", "3.11", "0123456789abcdef0123", ())
    push = _push(context)
    uri = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/demo-worker:0123456789abcdef0123"
    assert push.uri == uri
    assert docker_commands(push) == [
        ["docker", "buildx", "build", "--platform", "linux/arm64", "--provenance=false",
         "--load", "--tag", "demo-worker:0123456789abcdef0123", str(tmp_path / "ctx")],
        ["docker", "tag", "demo-worker:0123456789abcdef0123", uri],
        ["docker", "login", "--username", "AWS", "--password-stdin",
         f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"],
        ["docker", "push", uri]]
    steps = manual_steps(push, "demo", profile="ops",
                         deploy_command=["fsdgraph", "deploy", "--config", "my config.toml"])
    assert steps == [
        shlex.join(docker_commands(push)[0]),
        shlex.join(docker_commands(push)[1]),
        "aws --profile ops --region eu-west-1 ecr describe-repositories --repository-names "
        "demo-worker >/dev/null 2>&1 || aws --profile ops --region eu-west-1 ecr "
        "create-repository --repository-name demo-worker --tags "
        "Key=fsdgraph:deployment,Value=demo",
        "aws --profile ops --region eu-west-1 ecr get-login-password | docker login --username "
        f"AWS --password-stdin {ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com",
        f"docker push {uri}",
        f"fsdgraph deploy --config 'my config.toml' --image-uri {uri}"]


def test_operator_policy_for_an_image_adds_its_repository_only() -> None:
    d = Deployment(AwsSettings(deployment="demo", region="eu-west-1"), ACCOUNT)
    assert d.operator_policy() == {**d.operator_policy(image=True), "Statement": [
        s for s in d.operator_policy(image=True)["Statement"] if s["Sid"] != "ImageRepository"]}
    (image,) = [s for s in d.operator_policy(image=True)["Statement"]
                if s["Sid"] == "ImageRepository"]
    assert image["Resource"] == [f"arn:aws:ecr:eu-west-1:{ACCOUNT}:repository/demo-worker"]
    assert {"ecr:PutImage", "ecr:CreateRepository", "ecr:SetRepositoryPolicy"} <= \
        set(image["Action"])
    assert all(a.startswith("ecr:") and "*" not in a for a in image["Action"])


def _offline_config(path: Path, deployment: str) -> Path:
    """A config whose account is known: nothing asks AWS before the step that would."""
    path.write_text(f'[aws]\nregion = "us-east-1"\ndeployment = "{deployment}"\n'
                    f'account = "{ACCOUNT}"\n')
    return path


def test_deploy_image_without_docker_writes_the_context_and_prints_the_steps(
        offline_pip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _offline_config(tmp_path / "config.toml", "nodocker")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no docker
    target = tmp_path / "ctx"
    code = main(["deploy", "--config", str(config), "--image", "--image-context", str(target)])
    out, err = capsys.readouterr()
    assert code == EXIT_PASSED, err
    result = json.loads(out)
    registry = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
    tag = (target / MARKER).read_text().strip()
    uri = f"{registry}/nodocker-worker:{tag}"
    assert (result["deployed"], result["package_type"], result["image_uri"]) == \
        (False, "Image", uri)
    assert result["reason"] == "docker is not installed ('docker' is not on PATH)"
    assert result["steps"][0] == ("docker buildx build --platform linux/amd64 "
                                  f"--provenance=false --load --tag nodocker-worker:{tag} "
                                  f"{target}")
    assert result["steps"][-1] == f"fsdgraph deploy --config {config} --image-uri {uri}"
    assert (f"not building the image here: docker is not installed ('docker' is not on PATH). "
            f"The context is in {target}; on a machine with docker and the AWS CLI, run:") in err
    for number, step in enumerate(result["steps"], 1):
        assert f"  {number}. {step}" in err
    assert (target / "code/fsdgraph/kernels/fused.py").is_file()


def test_deploy_image_with_docker_but_no_daemon_says_so(
        offline_pip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _offline_config(tmp_path / "config.toml", "nodaemon")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon at "
                      "unix:///var/run/docker.sock. Is the docker daemon running?' >&2\nexit 1\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    code = main(["deploy", "--config", str(config), "--image", "--image-context",
                 str(tmp_path / "ctx")])
    out, err = capsys.readouterr()
    assert code == EXIT_PASSED, err
    assert json.loads(out)["reason"] == (
        "the docker daemon is not running (Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock. Is the docker daemon running?)")


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "--package", "f.zip"], "--image and --package exclude each other: a function "
                                        "runs a container image or a zip, not both"),
    (["--image-uri", "x", "--no-dependencies"], "--image-uri and --no-dependencies exclude "
                                                "each other"),
    (["--image", "--image-uri", "x"], "--image and --image-uri exclude each other"),
    (["--image-uri", "docker.io/library/python:3.11"],
     "image URI 'docker.io/library/python:3.11': expected an image in Amazon ECR, "
     "ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG (or @sha256:DIGEST); Lambda runs "
     "container images from ECR only"),
    (["--image-uri", f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/repo"],
     "expected an image in Amazon ECR"),
    (["--image-uri", f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/repo:v1"],
     f"image URI '{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/repo:v1' is in eu-west-1, but the "
     "function is in us-east-1: Lambda runs images from ECR in the function's own region (push "
     "the image there)"),
])
def test_deploy_refuses_what_no_image_function_could_be(
        tmp_path: Path, args: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _offline_config(tmp_path / "config.toml", "refused")
    assert main(["deploy", "--config", str(config), *args]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_deploy_image_dry_run_says_what_it_would_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _offline_config(tmp_path / "config.toml", "dry")
    assert main(["deploy", "--config", str(config), "--image", "--dry-run",
                 "--image-context", str(tmp_path / "ctx")]) == EXIT_PASSED
    out, err = capsys.readouterr()
    uri = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/dry-worker:TAG"
    assert f"would write the image context to {tmp_path / 'ctx'}, build it and push {uri}" in err
    assert (f"would create function dry-worker (arn:aws:lambda:us-east-1:{ACCOUNT}:function:"
            f"dry-worker) from image {uri}") in err
    assert json.loads(out)["dry_run"] is True
    assert not (tmp_path / "ctx").exists()


# -- against the local servers --------------------------------------------------------------------
def _server_config(path: Path, moto: Any, lam: Any, deployment: str) -> Path:
    endpoints = {s: moto.url for s in ("s3", "sns", "sqs", "sts", "iam", "logs")}
    endpoints["lambda"] = lam.url
    path.write_text(
        f'[aws]\nregion = "{moto.region}"\ndeployment = "{deployment}"\ntimeout_s = 900\n'
        "[aws.endpoints]\n" + "".join(f'{k} = "{v}"\n' for k, v in endpoints.items())
        + "[run]\ntimeout_s = 600\nstall_timeout_s = 60\npeer_timeout_s = 60\n")
    return path


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A ``docker`` first on PATH that answers ``version`` and records every other call (its
    arguments, and what it read on standard input for ``--password-stdin``)."""
    bin_dir, log = tmp_path / "fake-bin", tmp_path / "docker-calls.jsonl"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\nargs = sys.argv[1:]\n"
        "if args[:1] == ['version']:\n    print('27.0.0')\n    sys.exit(0)\n"
        "stdin = sys.stdin.read() if '--password-stdin' in args else None\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'args': args, 'stdin': stdin}) + '\\n')\n"
        "print('done:', args[0])\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield log


def test_deploy_image_builds_pushes_and_runs_the_compiled_kernel(
        moto_server: Any, lambda_server: Any, offline_pip: Path, fake_docker: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``fsdgraph deploy --image`` with docker: ECR repository made (moto), docker logged in
    with ECR's token on its standard input, the image built and pushed, the function created
    from it; a run on it computes with the compiled kernel and equals the serial reference;
    teardown removes the repository too."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", moto_server.url)
    config = _server_config(tmp_path / "config.toml", moto_server, lambda_server, "img")
    target = tmp_path / "ctx"
    code = main(["deploy", "--config", str(config), "--image", "--image-context", str(target)])
    out, err = capsys.readouterr()
    assert code == EXIT_PASSED, err
    result = json.loads(out)
    tag = (target / MARKER).read_text().strip()
    uri = f"{ACCOUNT}.dkr.ecr.{moto_server.region}.amazonaws.com/img-worker:{tag}"
    assert (result["deployed"], result["image_uri"]) == (True, uri)
    assert MOTO_PASSWORD not in out + err

    calls = [json.loads(line) for line in fake_docker.read_text().splitlines()]
    context = ImageContext(target, "x86_64", "3.11", tag, ())
    push = ImagePush(context, "img-worker", uri.split("/")[0], moto_server.region)
    assert [c["args"] for c in calls] == [c[1:] for c in docker_commands(push)]
    assert [c["stdin"] for c in calls] == [None, None, MOTO_PASSWORD, None]

    lam = boto3.client("lambda", region_name=moto_server.region, endpoint_url=moto_server.url)
    ecr = boto3.client("ecr", region_name=moto_server.region, endpoint_url=moto_server.url)
    try:
        function = lam.get_function(FunctionName="img-worker")
        conf = function["Configuration"]
        assert (conf["PackageType"], function["Code"]["ImageUri"]) == ("Image", uri)
        assert conf["ImageConfigResponse"]["ImageConfig"]["Command"] == [HANDLER]
        assert conf["Environment"]["Variables"] == {"FSDGRAPH_KERNEL": "numba"}
        (repo,) = ecr.describe_repositories(repositoryNames=["img-worker"])["repositories"]
        assert {"Key": "fsdgraph:deployment", "Value": "img"} in \
            ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"]

        report_path = tmp_path / "run.json"
        code = main(["graphchallenge", "--config", str(config), "--backend", "aws",
                     "--synthetic", "--layers", "6", "--images", "64", "--workers", "2",
                     "--no-progress", "--report", str(report_path)])
        out, err = capsys.readouterr()
        logs = "\n".join(p.read_text()[-2000:] for p in lambda_server.log_dir.glob("img-*.log"))
        assert code == EXIT_PASSED, f"{out}\n{err}\n{logs}"
        assert "ok   values equal the serial reference bit for bit" in out
        report = json.loads(report_path.read_text())
        assert report["kernel"] == "numba"
        assert {w["kernel"] for w in report["per_worker"]} == {"numba"}

        assert main(["teardown", "--config", str(config)]) == EXIT_PASSED
        removed = json.loads(capsys.readouterr().out)["removed"]
        assert {"kind": "image repository", "name": "img-worker",
                "arn": repo["repositoryArn"]} in removed
        assert "img-worker" not in [r["repositoryName"]
                                    for r in ecr.describe_repositories()["repositories"]]
    finally:
        teardown(load_aws_settings(config), say=lambda _: None)


def test_an_image_built_elsewhere_deploys_and_the_package_type_stays(
        moto_server: Any, lambda_server: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--image-uri`` deploys an image function (and a second deploy updates it); a zip cannot
    replace it, nor an image a zip function: Lambda cannot change a package type."""
    config = _server_config(tmp_path / "config.toml", moto_server, lambda_server, "elsewhere")
    uri = f"{ACCOUNT}.dkr.ecr.{moto_server.region}.amazonaws.com/team/worker:v1"
    lam = boto3.client("lambda", region_name=moto_server.region, endpoint_url=moto_server.url)
    try:
        assert main(["deploy", "--config", str(config), "--image-uri", uri]) == EXIT_PASSED
        out, err = capsys.readouterr()
        assert json.loads(out)["package_type"] == "Image"
        assert f"function elsewhere-worker (1769 MB, 900 s, x86_64, image {uri}: the " \
               "compiled kernel)" in err
        lam.update_function_configuration(FunctionName="elsewhere-worker",
                                          Environment={"Variables": {"TEAM": "a"}})
        assert main(["deploy", "--config", str(config), "--image-uri",
                     uri.replace(":v1", ":v2")]) == EXIT_PASSED
        capsys.readouterr()
        function = lam.get_function(FunctionName="elsewhere-worker")
        assert function["Code"]["ImageUri"] == uri.replace(":v1", ":v2")
        assert function["Configuration"]["Environment"]["Variables"] == \
            {"TEAM": "a", "FSDGRAPH_KERNEL": "numba"}  # the user's variables are kept

        assert main(["deploy", "--config", str(config), "--no-dependencies"]) == EXIT_INPUT
        assert ("function elsewhere-worker runs a container image, and Lambda cannot change "
                "it to a zip: delete it first (aws lambda delete-function --function-name "
                "elsewhere-worker), then deploy again") in capsys.readouterr().err
        assert main(["teardown", "--config", str(config)]) == EXIT_PASSED
        assert "image repository" not in capsys.readouterr().out  # not the deployment's own

        assert main(["deploy", "--config", str(config), "--no-dependencies"]) == EXIT_PASSED
        out, err = capsys.readouterr()
        assert json.loads(out)["package_type"] == "Zip"
        assert "zip: the scipy kernel; `fsdgraph deploy --image` ships the compiled one" in err
        assert main(["deploy", "--config", str(config), "--image-uri", uri]) == EXIT_INPUT
        assert ("function elsewhere-worker runs a zip, and Lambda cannot change it to a "
                "container image") in capsys.readouterr().err
    finally:
        teardown(load_aws_settings(config), say=lambda _: None)


def test_local_endpoint_refuses_an_image_function_without_a_command(
        moto_server: Any, lambda_server: Any) -> None:
    """The local endpoint cannot read an image's CMD: an image function must name its handler
    in ImageConfig.Command, and one that does not is refused, saying so."""
    from botocore.exceptions import ClientError

    region = moto_server.region
    iam = boto3.client("iam", region_name=region, endpoint_url=moto_server.url)
    role = iam.create_role(RoleName="no-command-role", AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": []}))["Role"]["Arn"]
    moto_lambda = boto3.client("lambda", region_name=region, endpoint_url=moto_server.url)
    moto_lambda.create_function(
        FunctionName="no-command", Role=role, PackageType="Image",
        Code={"ImageUri": f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/x:1"})
    lam = boto3.client("lambda", region_name=region, endpoint_url=lambda_server.url)
    try:
        with pytest.raises(ClientError) as caught:
            lam.invoke(FunctionName="no-command", Payload=b"{}")
        assert caught.value.response["Error"]["Code"] == "InvalidParameterValueException"
        assert ("function no-command is a container image function without "
                "ImageConfig.Command: the local endpoint runs handlers from its own Python "
                "environment and cannot read the image's CMD") in str(caught.value)
    finally:
        moto_lambda.delete_function(FunctionName="no-command")
        iam.delete_role(RoleName="no-command-role")
