"""The worker function as a Lambda **container image**: the one way to ship the compiled kernel.

A zip cannot hold numba: its llvmlite alone is 171 MiB unpacked, and the worker's zip with it
would be 357 MiB, above the 250 MiB Lambda allows. A zip function therefore runs the scipy
kernel (same results, slower); an image may be 10 GB.

:func:`write_context` writes a docker build context::

    Dockerfile          FROM public.ecr.aws/lambda/python:3.11 for the function's architecture
    requirements.txt    the worker's dependencies, numba among them: name==version --hash=...
    wheels/             their wheels, for the image's platform
    code/fsdgraph/...   fsdgraph's code in its installed layout (the zip's selection)
    entrypoint.sh       readies numba's cache, then starts Lambda's runtime

**Reproducible.** pip chooses the wheels here, once, for the image's platform (the base image's
CPython, manylinux up to its glibc, the architecture; binary wheels only), and they travel in the
context: the Dockerfile installs them with ``--no-index --require-hashes``, so a build reads
nothing from an index and cannot pick other versions later. The image's tag is the hash of the
context: the same context is the same tag, a changed one a new tag (and a function update).

**The compiled kernels come with the image.** The build imports :mod:`fsdgraph.kernels.fused`,
which compiles its serial kernels and caches their machine code (numba's ``cache=True``) in
:data:`CACHE_SEED`. For Lambda to load that code instead of compiling again (seconds per cold
start):

* numba keys cached code by the CPU's name and features, and the build machine is not Lambda's.
  The image pins both (``NUMBA_CPU_NAME`` :data:`NUMBA_CPUS`, ``NUMBA_CPU_FEATURES`` empty), for
  the build and the function alike: ``x86-64-v3`` (AVX2; every Lambda x86_64 machine has it) or
  Graviton2's ``neoverse-n1``;
* numba only uses a cache folder it can write to (it creates a file there to check), and on
  Lambda the image is read-only. So the function's ``NUMBA_CACHE_DIR`` is
  :data:`RUNTIME_CACHE`, in the writable ``/tmp`` that Lambda gives each execution environment
  (empty: not the image's ``/tmp``), and the entrypoint copies the image's cache there before the
  runtime starts: a few MB, once per execution environment;
* a cache index is stamped with its source file (its hash from numba 0.68; its mtime and size up
  to 0.67, which the base image's glibc gets), so the build sets every file's mtime to a whole
  second (:data:`FILE_MTIME`) before it compiles: the function runs the very files the build
  compiled, at the same path, with the same stamps however the image's files are copied.

``FSDGRAPH_KERNEL=numba`` makes a worker without numba fail instead of running the fallback.

:func:`deploy_image` (``fsdgraph deploy --image``) writes the context and, where docker runs,
builds, pushes to ECR (repository ``<deployment>-worker``, made if missing) and deploys the
function from it; otherwise it returns the commands that do the same
(:func:`manual_steps`). Credentials never appear in a command line or in what is said: docker
gets ECR's password on its standard input.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fsdgraph.backends.aws.config import DEPLOYMENT_TAG, AwsSettings
from fsdgraph.backends.aws.deploy import _aws_errors, _Clients, _code, deploy, resolve
from fsdgraph.backends.aws.package import DEFAULT_DEPENDENCIES, HANDLER, code_files, lambda_platform
from fsdgraph.errors import ConfigError, TransportError

__all__ = ["CACHE_SEED", "IMAGE_DEPENDENCIES", "IMAGE_PYTHON", "NUMBA_CPUS", "RUNTIME_CACHE",
           "ImageContext", "ImageDeployment", "ImagePush", "deploy_image", "docker_commands",
           "docker_unavailable", "dockerfile", "entrypoint_script", "manual_steps",
           "push_image", "write_context"]

#: The Lambda base image (``:<python>``) and the Python it runs by default.
BASE_IMAGE = "public.ecr.aws/lambda/python"
IMAGE_PYTHON = "3.11"
#: glibc 2.x of each base image (Amazon Linux 2 up to 3.11, Amazon Linux 2023 from 3.12): the
#: newest manylinux wheels it runs.
BASE_GLIBC = {"3.10": 26, "3.11": 26, "3.12": 34, "3.13": 34}
#: What the image installs: the zip's dependencies and numba (which brings llvmlite).
IMAGE_DEPENDENCIES: tuple[str, ...] = (*DEFAULT_DEPENDENCIES, "numba>=0.59")
#: docker's platform of each Lambda architecture.
DOCKER_PLATFORMS = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}
#: The CPU numba compiles for, per architecture: one every Lambda machine of it runs.
NUMBA_CPUS = {"x86_64": "x86-64-v3", "arm64": "neoverse-n1"}
#: Where the build caches the compiled kernels (in the image), and where functions use them.
CACHE_SEED = "/opt/fsdgraph/numba-cache"
RUNTIME_CACHE = "/tmp/numba-cache"
#: The base image's entrypoint, which starts Lambda's runtime interface client.
RUNTIME_ENTRYPOINT = "/lambda-entrypoint.sh"
#: The mtime of fsdgraph's files in the context and the image (1980-01-01, as in the zip).
FILE_MTIME = 315532800
#: A file in every context this module writes: only such a folder is ever replaced.
MARKER = ".fsdgraph-image"
#: How many lines of a failed command's output an error quotes.
_TAIL_LINES = 20


@dataclass(frozen=True)
class ImageContext:
    """A build context :func:`write_context` wrote: its folder, target and content tag."""

    path: Path
    architecture: str
    python_version: str
    #: The hash of every file in the context (hex): the image's tag.
    tag: str
    #: The dependencies it installs, ``name==version``, sorted by name.
    requirements: tuple[str, ...]

    @property
    def platform(self) -> str:
        """docker's ``--platform``."""
        return DOCKER_PLATFORMS[self.architecture]

    @property
    def base_image(self) -> str:
        return f"{BASE_IMAGE}:{self.python_version}"


@dataclass(frozen=True)
class ImagePush:
    """Where a context's image goes: a local name, then an ECR repository in the function's
    region."""

    context: ImageContext
    repository: str
    #: ``<account>.dkr.ecr.<region>.amazonaws.com``
    registry: str
    region: str

    @property
    def local(self) -> str:
        return f"{self.repository}:{self.context.tag}"

    @property
    def uri(self) -> str:
        return f"{self.registry}/{self.repository}:{self.context.tag}"


@dataclass(frozen=True)
class ImageDeployment:
    """What :func:`deploy_image` did: deployed the image, or (``reason`` why not) left
    ``steps`` for the user."""

    push: ImagePush
    deployed: bool
    reason: str = ""
    steps: list[str] = field(default_factory=list)


# -- the context ---------------------------------------------------------------------------------
def write_context(dest: Path, *, architecture: str = "x86_64",
                  python_version: str = IMAGE_PYTHON,
                  dependencies: Sequence[str] = IMAGE_DEPENDENCIES,
                  pip_args: Sequence[str] = ()) -> ImageContext:
    """Write the build context to ``dest`` (replacing a context written before) and describe it.

    ``dependencies`` are pip requirements downloaded for the image's platform; ``pip_args`` go to
    ``pip download`` as they are (``--index-url``, ``--find-links``, ...). Raises
    :class:`~fsdgraph.errors.ConfigError` for an unknown architecture or Python, a ``dest`` that
    holds something else, or pip's failure (with the end of its output); ``dest`` is then left as
    it was."""
    lambda_platform(architecture)
    if python_version not in BASE_GLIBC:
        raise ConfigError(f"no Lambda base image known for Python {python_version!r}; known: "
                          f"{', '.join(BASE_GLIBC)}")
    if dest.exists() and not (dest.is_dir() and ((dest / MARKER).is_file()
                                                 or not any(dest.iterdir()))):
        raise ConfigError(f"{dest} is not empty and not an image context fsdgraph wrote: "
                          "choose another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        for arcname, source in code_files().items():
            target = tmp / "code" / arcname
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        (tmp / "wheels").mkdir()
        pins = _download(dependencies, tmp / "wheels", architecture, python_version, pip_args)
        (tmp / "requirements.txt").write_text("".join(f"{pin}\n" for pin in pins))
        (tmp / "Dockerfile").write_text(dockerfile(architecture, python_version))
        (tmp / "entrypoint.sh").write_text(entrypoint_script())
        tag = _tree_hash(tmp)
        (tmp / MARKER).write_text(f"{tag}\n")
        for path in tmp.rglob("*"):  # a COPY layer of the same files is the same layer
            os.utime(path, (FILE_MTIME, FILE_MTIME))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ImageContext(dest, architecture, python_version, tag,
                        tuple(pin.split(" ", 1)[0] for pin in pins))


def dockerfile(architecture: str, python_version: str = IMAGE_PYTHON, *,
               seed: str = CACHE_SEED) -> str:
    """The Dockerfile of a context, its build caching the kernels in ``seed`` (see the module
    docstring for each step's reason)."""
    cpu = NUMBA_CPUS[architecture]
    return f"""\
# The fsdgraph worker function as a Lambda container image, with the compiled (numba) layer
# kernel. Written by `fsdgraph deploy --image` (fsdgraph.backends.aws.image); build with
#   docker buildx build --platform {DOCKER_PLATFORMS[architecture]} --provenance=false -t NAME .
FROM {BASE_IMAGE}:{python_version}

# numba keys its cached machine code by CPU name and features: pinned, the code this build
# compiles is the code the function loads, on any of Lambda's {architecture} machines. A worker
# without numba fails rather than run the scipy kernel.
ENV NUMBA_CPU_NAME={cpu} \\
    NUMBA_CPU_FEATURES="" \\
    NUMBA_CACHE_DIR={RUNTIME_CACHE} \\
    FSDGRAPH_KERNEL=numba

# The dependencies, numba among them: the wheels of this folder, checked against the hashes in
# requirements.txt (no index is asked).
RUN --mount=type=bind,source=wheels,target=/tmp/wheels \\
    --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \\
    pip install --no-index --find-links /tmp/wheels --require-hashes --no-cache-dir \\
        --target "${{LAMBDA_TASK_ROOT}}" -r /tmp/requirements.txt

COPY code/ ${{LAMBDA_TASK_ROOT}}/

# Compile the kernels now, into the image (Lambda's /tmp is not the image's), and fsdgraph's
# bytecode (nothing can be written to the image on Lambda). numba up to 0.67 stamps its cache
# with the source's mtime: a whole second, which any copy of the files keeps.
RUN find "${{LAMBDA_TASK_ROOT}}/fsdgraph" -exec touch -d @{FILE_MTIME} {{}} + \\
    && NUMBA_CACHE_DIR={seed} python -c "import fsdgraph.kernels.fused" \\
    && python -m compileall -q "${{LAMBDA_TASK_ROOT}}/fsdgraph"

# Copies the compiled kernels to NUMBA_CACHE_DIR (numba only uses a cache it can write to),
# then starts Lambda's runtime with the handler.
COPY entrypoint.sh /opt/fsdgraph/entrypoint.sh
ENTRYPOINT ["/bin/sh", "/opt/fsdgraph/entrypoint.sh"]
CMD ["{HANDLER}"]
"""


def entrypoint_script(seed: str = CACHE_SEED, runtime: str = RUNTIME_ENTRYPOINT) -> str:
    """The image's entrypoint: copy the compiled kernels from ``seed`` to ``$NUMBA_CACHE_DIR``,
    then run ``runtime`` with the image's command (the handler)."""
    seed_q = shlex.quote(seed)
    return f"""\
#!/bin/sh
# Lambda gives each execution environment its own empty /tmp, and numba only uses a cache folder
# it can write to: the kernels compiled into the image are copied to NUMBA_CACHE_DIR before the
# runtime starts. Should the copy fail, numba compiles them again (slower, the same code).
if [ -n "${{NUMBA_CACHE_DIR:-}}" ] && [ -d {seed_q} ]; then
    mkdir -p "$NUMBA_CACHE_DIR" && cp -R {seed_q}/. "$NUMBA_CACHE_DIR/" \\
        || echo "fsdgraph: numba's cache was not copied to $NUMBA_CACHE_DIR" >&2
fi
exec {shlex.quote(runtime)} "$@"
"""


def _download(requirements: Sequence[str], wheels: Path, architecture: str,
              python_version: str, pip_args: Sequence[str]) -> list[str]:
    """Download ``requirements`` and their dependencies for the image into ``wheels``; return
    their pins (``name==version --hash=sha256:...``), sorted by name."""
    if not requirements:
        return []
    machine = lambda_platform(architecture)
    # pip matches platform tags as strings: every manylinux the base image's glibc runs is named.
    platforms = [f"manylinux2014_{machine}"] + [
        f"manylinux_2_{minor}_{machine}" for minor in range(17, BASE_GLIBC[python_version] + 1)]
    command = [sys.executable, "-m", "pip", "download", "--dest", str(wheels),
               "--only-binary=:all:", "--implementation", "cp", "--python-version",
               python_version, *(f"--platform={p}" for p in platforms), "--no-input",
               "--disable-pip-version-check", *pip_args, *requirements]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-_TAIL_LINES:])
        raise ConfigError(f"pip could not download {' '.join(requirements)} for the image "
                          f"(CPython {python_version}, {platforms[-1]}):\n{tail}")
    pins: dict[str, str] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in pins:
            raise ConfigError(f"pip downloaded two wheels of {name}: {wheels}")
        pins[key] = f"{key}=={version} --hash=sha256:{digest}"
    return [pins[key] for key in sorted(pins)]


def _tree_hash(root: Path) -> str:
    """A hash of every file's path and bytes below ``root`` (the first 20 hex digits)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:20]


# -- docker and ECR ------------------------------------------------------------------------------
def docker_unavailable(docker: str = "docker") -> str | None:
    """Why ``docker`` cannot build here (not installed, its daemon not running), or None."""
    path = shutil.which(docker)
    if path is None:
        return f"docker is not installed ({docker!r} is not on PATH)"
    try:
        done = subprocess.run([path, "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker does not answer: {exc}"
    if done.returncode != 0 or not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or ["no server version"])[-1]
        return f"the docker daemon is not running ({last})"
    return None


def docker_commands(push: ImagePush, docker: str = "docker") -> list[list[str]]:
    """The docker commands that build, tag, log in (the password on standard input) and push.

    ``--provenance=false``: buildx otherwise adds an attestation, which makes the pushed image a
    manifest list, and Lambda takes single-platform image manifests only."""
    ctx = push.context
    return [[docker, "buildx", "build", "--platform", ctx.platform, "--provenance=false",
             "--load", "--tag", push.local, str(ctx.path)],
            [docker, "tag", push.local, push.uri],
            [docker, "login", "--username", "AWS", "--password-stdin", push.registry],
            [docker, "push", push.uri]]


def manual_steps(push: ImagePush, deployment: str, *, profile: str | None = None,
                 deploy_command: Sequence[str] = ("fsdgraph", "deploy")) -> list[str]:
    """The shell commands that do what :func:`push_image` and the deploy do, for a machine with
    docker and the AWS CLI."""
    build, tag, login, push_cmd = (shlex.join(c) for c in docker_commands(push))
    aws = ["aws", *(("--profile", profile) if profile else ()), "--region", push.region]
    describe = shlex.join([*aws, "ecr", "describe-repositories", "--repository-names",
                           push.repository])
    create = shlex.join([*aws, "ecr", "create-repository", "--repository-name", push.repository,
                         "--tags", f"Key={DEPLOYMENT_TAG},Value={deployment}"])
    return [build, tag,
            f"{describe} >/dev/null 2>&1 || {create}",
            f"{shlex.join([*aws, 'ecr', 'get-login-password'])} | {login}",
            push_cmd,
            shlex.join([*deploy_command, "--image-uri", push.uri])]


def push_image(clients: _Clients, push: ImagePush, deployment: str, *,
               docker: str = "docker", say: Callable[[str], None] = print) -> None:
    """Create the ECR repository if missing (tagged with the deployment), log docker in with
    ECR's token and run :func:`docker_commands`."""
    from botocore.exceptions import ClientError

    ecr = clients["ecr"]
    with _aws_errors(f"image repository {push.repository}"):
        try:
            ecr.create_repository(repositoryName=push.repository,
                                  tags=[{"Key": DEPLOYMENT_TAG, "Value": deployment}])
            say(f"image repository {push.repository} created")
        except ClientError as exc:
            if _code(exc) != "RepositoryAlreadyExistsException":
                raise
        token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    password = base64.b64decode(token).decode().partition(":")[2]
    for command in docker_commands(push, docker):
        _run(command, say, stdin=password if "--password-stdin" in command else None)


def _run(command: list[str], say: Callable[[str], None], stdin: str | None = None) -> None:
    """Run ``command``, saying its output line by line; a failure raises with its last lines."""
    shown = shlex.join(command)
    say(f"$ {shown}")
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        with subprocess.Popen(command, stdin=subprocess.PIPE if stdin is not None else None,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            if stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(stdin)
                proc.stdin.close()
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                say(tail[-1])
            code = proc.wait()
    except OSError as exc:
        raise TransportError(f"`{shown}` could not start: {exc}") from exc
    if code != 0:
        raise TransportError(f"`{shown}` failed with exit code {code}:\n" + "\n".join(tail))


# -- all of it -----------------------------------------------------------------------------------
def deploy_image(settings: AwsSettings, context_dir: Path, *, docker: str = "docker",
                 dry_run: bool = False, say: Callable[[str], None] = print,
                 deploy_command: Sequence[str] = ("fsdgraph", "deploy"),
                 pip_args: Sequence[str] = ()) -> ImageDeployment:
    """``fsdgraph deploy --image``: write the context to ``context_dir``; where docker runs,
    build and push the image and deploy the function from it (:func:`deploy`), else return the
    :func:`manual_steps` that do (``deploy_command`` starts their last one). ``dry_run`` only
    says what would be done (the tag is then not known: ``TAG``)."""
    clients = _Clients(settings)
    d = resolve(settings, clients)
    s = d.settings
    if dry_run:
        planned = ImagePush(ImageContext(context_dir, s.architecture, IMAGE_PYTHON, "TAG", ()),
                            d.repository, d.registry, s.region)
        say(f"would write the image context to {context_dir}, build it and push {planned.uri}")
        deploy(settings, image_uri=planned.uri, dry_run=True, say=say)
        return ImageDeployment(planned, deployed=False, reason="dry run")
    context = write_context(context_dir, architecture=s.architecture, pip_args=pip_args)
    say(f"image context {context.path} (tag {context.tag}): {', '.join(context.requirements)}")
    push = ImagePush(context, d.repository, d.registry, s.region)
    reason = docker_unavailable(docker)
    if reason is not None:
        steps = manual_steps(push, s.deployment, profile=s.profile,
                             deploy_command=deploy_command)
        return ImageDeployment(push, deployed=False, reason=reason, steps=steps)
    push_image(clients, push, s.deployment, docker=docker, say=say)
    deploy(settings, image_uri=push.uri, say=say)
    return ImageDeployment(push, deployed=True)

