"""Build the notebook image offline: debootstrap base, host wheelhouse, `enclave_image/Dockerfile`.

No image registry is reachable from the enclave's machines (and a container cannot reach the
package index), so the image is made the way air-gapped sites make theirs:

1. a Debian bookworm rootfs from `debootstrap --variant=minbase`, cached as a tarball under
   ~/.cache/enclave/image/ keyed by its package list, and `docker import`ed as enclave-base:<key>;
2. a wheelhouse of every pinned requirement (enclave_image/requirements.txt) downloaded on the
   host as cp311 manylinux wheels, cached keyed by the requirements file;
3. wheels of this repository's light client (`enclave` with only `enclave.client`, depending on
   the bare package's dependencies, httpx) and of the lock-down extension, built on the host. The
   rest of the package stays out on purpose: `enclave.demo` regenerates the demo's confidential
   people from a seed, and services' code has no business in a scholar's container;
4. `docker build` of enclave_image/Dockerfile with networking disabled.

The image is tagged enclave-notebook:<hash12>, where the hash covers everything that goes into it
(Dockerfile, requirements, config, entrypoint, the third-party wheels' hashes, the client's and the
lock-down's sources and the base rootfs key), so only changes that reach the image rebuild it. Building is idempotent: if that tag exists, its ID comes back
without Docker being asked to build anything, in well under a second.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from enclave.envsettings import cache_dir as enclave_cache_dir

IMAGE_REPOSITORY = "enclave-notebook"
BASE_REPOSITORY = "enclave-base"
HASH_LENGTH = 12
# Older notebook images kept for rollback (and for sessions still running on them).
KEEP_IMAGES = 3

# The base rootfs. Changing any of these changes the cache key (and so the image hash).
DEBIAN_SUITE = "bookworm"
DEBIAN_VARIANT = "minbase"
DEBIAN_PACKAGES = ("python3", "python3-venv")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What is cut from the rootfs before import: package caches and documentation nobody reads here.
ROOTFS_PRUNE = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                "usr/share/info", "usr/share/locale")

# Wheels for the image's interpreter (bookworm's python3.11 on x86_64, glibc 2.36).
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")

# Files of enclave_image/ that go into the build context as they are.
CONTEXT_FILES = ("Dockerfile", "requirements.txt", "jupyter_server_config.py", "entrypoint.sh")

Progress = Callable[[str], None]


class ImageBuildError(Exception):
    """The image cannot be built; the message says why, in one line, for the operator."""


def stderr_progress(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class NotebookImage:
    """A built (or found) notebook image."""

    id: str
    tag: str
    content_hash: str
    size_bytes: int
    created: str
    built: bool  # False when an image with the tag already existed
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


# --- locations -------------------------------------------------------------------------------------

def default_repo_root() -> Path:
    """The repository this module was installed from (editable install): holds enclave_image/."""
    return Path(__file__).resolve().parents[3]


def default_cache_dir() -> Path:
    return enclave_cache_dir("image")


def _image_dir(repo_root: Path) -> Path:
    image_dir = repo_root / "enclave_image"
    missing = [name for name in (*CONTEXT_FILES, "lockdown/pyproject.toml") if not (image_dir / name).is_file()]
    if missing:
        raise ImageBuildError(f"{image_dir} is incomplete (missing {', '.join(missing)}); pass the repository root")
    if not (repo_root / "pyproject.toml").is_file() or not (repo_root / "src" / "enclave").is_dir():
        raise ImageBuildError(f"{repo_root} is not the enclave repository (no pyproject.toml and src/enclave)")
    return image_dir


# --- hashing ---------------------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree_files(root: Path) -> Iterator[Path]:
    """Source files under root, in a stable order, without caches and build leftovers."""
    skip_dirs = {"__pycache__", ".pytest_cache", "build", "dist", ".mypy_cache", ".ruff_cache"}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if not name.endswith((".pyc", ".pyo")):
                yield Path(dirpath) / name


def _tree_digest(root: Path, relative_to: Path) -> list[tuple[str, str]]:
    return [(str(p.relative_to(relative_to)), _sha256_file(p)) for p in _tree_files(root)]


def rootfs_key(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> str:
    """Cache key of the base rootfs: what debootstrap is asked for and what is pruned after."""
    spec = {"suite": DEBIAN_SUITE, "variant": DEBIAN_VARIANT, "include": sorted(packages),
            "prune": list(ROOTFS_PRUNE)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:HASH_LENGTH]


def requirements_key(requirements: Path) -> str:
    return _sha256_file(requirements)[:HASH_LENGTH]


def content_hash(repo_root: Path, wheel_manifest: list[tuple[str, str]], base_key: str) -> str:
    """The hash the image tag carries: everything that determines the image's contents."""
    image_dir = _image_dir(repo_root)
    parts = {
        "base": base_key,
        "context": [(name, _sha256_file(image_dir / name)) for name in CONTEXT_FILES],
        "wheels": sorted(wheel_manifest),
        "lockdown": _tree_digest(image_dir / "lockdown", image_dir),
        # The client wheel is built from these; hashing sources avoids building it to find out.
        "client": [(str(p.relative_to(repo_root)), _sha256_file(p)) for p in _client_files(repo_root)]
                  + [("pyproject.toml", _sha256_file(repo_root / "pyproject.toml"))],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --- caches ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _build_lock(cache_dir: Path) -> Iterator[None]:
    """One build at a time per cache (the e2e tests and an operator may both ask)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(argv: list[str], what: str, **kwargs) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise ImageBuildError(f"{what}: {argv[0]} is not installed") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ImageBuildError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")


def ensure_rootfs(cache_dir: Path, progress: Progress = stderr_progress) -> Path:
    """The cached base rootfs tarball, made with debootstrap (as root) when missing."""
    key = rootfs_key()
    tarball = cache_dir / f"rootfs-{DEBIAN_SUITE}-{key}.tar"
    if tarball.is_file():
        return tarball
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root to make the base rootfs: run `enclave image build` as root once")
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    mirror = os.environ.get("ENCLAVE_DEBIAN_MIRROR", DEFAULT_MIRROR)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="rootfs-") as work:
        target = Path(work) / "rootfs"
        progress(f"debootstrap {DEBIAN_SUITE} ({DEBIAN_VARIANT}, {', '.join(DEBIAN_PACKAGES)}) from {mirror}")
        started = time.monotonic()
        _run(["debootstrap", f"--variant={DEBIAN_VARIANT}", f"--include={','.join(DEBIAN_PACKAGES)}",
              DEBIAN_SUITE, str(target), mirror], "debootstrap")
        for relative in ROOTFS_PRUNE:
            pruned = target / relative
            if pruned.is_dir():
                for child in pruned.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        partial = Path(work) / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(target), "-cf", str(partial), "."], "packing the rootfs")
        os.replace(partial, tarball)
        progress(f"base rootfs ready in {time.monotonic() - started:.0f} s: {tarball}")
    return tarball


def ensure_wheelhouse(requirements: Path, cache_dir: Path, progress: Progress = stderr_progress) -> Path:
    """The cached wheelhouse for the pinned requirements, downloaded when missing."""
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    # --no-deps: requirements.txt pins the whole closure, so the wheelhouse is exactly it.
    return build_wheelhouse(
        requirements, cache_dir / f"wheels-{requirements_key(requirements)}",
        ["download", "--only-binary=:all:", *platforms, "--python-version", "3.11", "--implementation", "cp",
         "--abi", "cp311", "--abi", "abi3", "--abi", "none", "-d"],
        f"downloading the wheelhouse for {requirements.name} (cp311 manylinux wheels)", progress)


def build_wheelhouse(requirements: Path, wheelhouse: Path, pip_args: list[str], doing: str,
                     progress: Progress = stderr_progress) -> Path:
    """`wheelhouse` (made once, then reused): `pip <pip_args> DIR --no-deps -r requirements` into a
    scratch folder beside it, with a SHA256SUMS of its wheels, then moved into place whole, so a
    half-made wheelhouse is never taken for a finished one."""
    if (wheelhouse / "SHA256SUMS").is_file():
        return wheelhouse
    wheelhouse.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=wheelhouse.parent, prefix=f"{wheelhouse.name}-partial-"))
    try:
        progress(doing)
        started = time.monotonic()
        _run([sys.executable, "-m", "pip", pip_args[0], "--quiet", "--disable-pip-version-check", "--no-deps",
              *pip_args[1:], str(partial), "-r", str(requirements)], f"pip {pip_args[0]}")
        manifest = [f"{_sha256_file(w)}  {w.name}" for w in sorted(partial.glob("*.whl"))]
        if not manifest:
            raise ImageBuildError(f"pip {pip_args[0]} produced no wheels")
        (partial / "SHA256SUMS").write_text("\n".join(manifest) + "\n")
        if wheelhouse.exists():
            shutil.rmtree(wheelhouse)
        os.replace(partial, wheelhouse)
        progress(f"{wheelhouse.name} ready in {time.monotonic() - started:.0f} s: {len(manifest)} wheels")
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return wheelhouse


def wheel_manifest(wheelhouse: Path) -> list[tuple[str, str]]:
    """(file name, sha256) of every wheel in a downloaded wheelhouse."""
    entries = []
    for line in (wheelhouse / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        entries.append((name, digest))
    return entries


def _client_files(repo_root: Path) -> list[Path]:
    """The sources of the light client: the package's __init__ and enclave.client (if present yet)."""
    package = repo_root / "src" / "enclave"
    client = package / "client"
    return [package / "__init__.py", *(_tree_files(client) if client.is_dir() else [])]


def _client_project(repo_root: Path, target: Path) -> Path:
    """A project directory for the client-only `enclave` wheel, from the repository's metadata."""
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    package = repo_root / "src" / "enclave"
    for source in _client_files(repo_root):
        destination = target / "enclave" / source.relative_to(package)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    (target / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        "[project]\n"
        f"name = {json.dumps(project['name'])}\n"
        f"version = {json.dumps(project['version'])}\n"
        'description = "Model Enclave: the notebook client (HTTP only)"\n'
        f"requires-python = {json.dumps(project.get('requires-python', '>=3.11'))}\n"
        f"dependencies = {json.dumps(project.get('dependencies', []))}\n\n"
        '[tool.hatch.build.targets.wheel]\npackages = ["enclave"]\n')
    return target


def _build_local_wheels(repo_root: Path, target: Path, progress: Progress) -> None:
    """Wheels of the light client and of the lock-down extension."""
    # With hatchling at hand, build without an isolated environment: no package index needed.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    with tempfile.TemporaryDirectory(prefix="enclave-client-") as work:
        sources = {"the enclave client": _client_project(repo_root, Path(work)),
                   "the lock-down extension": repo_root / "enclave_image" / "lockdown"}
        for what, source in sources.items():
            progress(f"building the wheel of {what}")
            _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                  *isolation, "-w", str(target), str(source)], f"pip wheel {source}")


# --- Docker ----------------------------------------------------------------------------------------

def _docker_client():
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        raise ImageBuildError("the docker Python SDK is missing (pip install 'enclave[hub]')") from None
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except DockerException as exc:
        raise ImageBuildError(f"no Docker engine reachable ({exc}); start dockerd (make up does, as root)") from None
    return client


def _find_image(client, reference: str):
    from docker.errors import ImageNotFound

    try:
        return client.images.get(reference)
    except ImageNotFound:
        return None


def _describe(image, tag: str, digest: str, built: bool, seconds: float) -> NotebookImage:
    attrs = image.attrs
    return NotebookImage(id=image.id, tag=tag, content_hash=digest, size_bytes=int(attrs.get("Size", 0)),
                         created=str(attrs.get("Created", "")), built=built, seconds=round(seconds, 2))


def ensure_base_image(client, cache_dir: Path, progress: Progress) -> str:
    """The enclave-base:<key> image, imported from the cached rootfs when missing."""
    reference = f"{BASE_REPOSITORY}:{rootfs_key()}"
    if _find_image(client, reference) is not None:
        return reference
    tarball = ensure_rootfs(cache_dir, progress)
    progress(f"docker import {tarball.name} as {reference}")
    client.api.import_image_from_file(str(tarball), repository=BASE_REPOSITORY, tag=rootfs_key(),
                                      changes=["ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'])
    if _find_image(client, reference) is None:
        raise ImageBuildError(f"docker import did not produce {reference}")
    return reference


def _docker_build(client, context: Path, tag: str, buildargs: dict[str, str], nocache: bool,
                  progress: Progress) -> str:
    from docker.errors import APIError

    image_id = None
    try:
        stream = client.api.build(path=str(context), tag=tag, buildargs=buildargs, network_mode="none",
                                  rm=True, forcerm=True, nocache=nocache, pull=False, decode=True)
        for event in stream:
            if "error" in event:
                raise ImageBuildError(f"docker build failed: {event['error'].strip()}")
            text = event.get("stream", "").strip()
            # Docker's step lines say where the build is; pip's per-wheel chatter would drown them.
            if text.startswith(("Step ", "Successfully built", "Successfully tagged")):
                progress(text)
            if "aux" in event and "ID" in event["aux"]:
                image_id = event["aux"]["ID"]
    except APIError as exc:
        raise ImageBuildError(f"docker build failed: {exc.explanation or exc}") from None
    if image_id is None:
        found = _find_image(client, tag)
        if found is None:
            raise ImageBuildError("docker build finished without an image")
        image_id = found.id
    return image_id


def _prune_old_images(client, current_id: str, keep: int, progress: Progress) -> None:
    """Untag all but the `keep` newest notebook images, so rebuilds do not pile up.

    Docker refuses to remove an image a container still uses (running or stopped); such an image
    simply stays, so a session pinned to an older image is never disturbed.
    """
    from docker.errors import APIError

    images = sorted(client.images.list(name=IMAGE_REPOSITORY), key=lambda i: str(i.attrs.get("Created", "")),
                    reverse=True)
    removed = 0
    for image in [i for i in images if i.id != current_id][max(keep - 1, 0):]:
        for tag in image.tags:
            if tag.startswith(f"{IMAGE_REPOSITORY}:") and not tag.endswith(":latest"):
                try:
                    client.images.remove(tag)
                    removed += 1
                except APIError:
                    pass  # in use by a container: keep it
    if removed:
        progress(f"removed {removed} older notebook image tag(s), keeping the newest {keep}")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # same filesystem as the cache: no 200 MB copy
    except OSError:
        shutil.copy2(source, target)


def ensure_image(repo_root: Path | None = None, *, force: bool = False, cache_dir: Path | None = None,
                 progress: Progress = stderr_progress) -> NotebookImage:
    """Find or build the notebook image for these sources; see the module docstring."""
    started = time.monotonic()
    repo_root = Path(repo_root or default_repo_root()).resolve()
    cache_dir = Path(cache_dir or default_cache_dir())
    image_dir = _image_dir(repo_root)
    client = _docker_client()
    with _build_lock(cache_dir):
        wheelhouse = ensure_wheelhouse(image_dir / "requirements.txt", cache_dir, progress)
        digest = content_hash(repo_root, wheel_manifest(wheelhouse), rootfs_key())
        tag = f"{IMAGE_REPOSITORY}:{digest[:HASH_LENGTH]}"
        existing = _find_image(client, tag)
        if existing is not None and not force:
            return _describe(existing, tag, digest, built=False, seconds=time.monotonic() - started)

        base = ensure_base_image(client, cache_dir, progress)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="context-") as work:
            context = Path(work)
            for name in CONTEXT_FILES:
                shutil.copy2(image_dir / name, context / name)
            (context / "wheels").mkdir()
            for name, _ in wheel_manifest(wheelhouse):
                _link_or_copy(wheelhouse / name, context / "wheels" / name)
            (context / "local").mkdir()
            _build_local_wheels(repo_root, context / "local", progress)
            progress(f"docker build {tag} (network disabled)")
            image_id = _docker_build(client, context, tag, {"BASE_IMAGE": base, "CONTENT_HASH": digest},
                                     nocache=force, progress=progress)
        image = client.images.get(image_id)
        image.tag(IMAGE_REPOSITORY, "latest")
        _prune_old_images(client, image.id, KEEP_IMAGES, progress)
        result = _describe(image, tag, digest, built=True, seconds=time.monotonic() - started)
        progress(f"built {tag} ({result.size_bytes / 1e6:.0f} MB) in {result.seconds:.0f} s")
        return result


def build_image(repo_root: Path | None = None, *, force: bool = False, cache_dir: Path | None = None,
                progress: Progress = stderr_progress) -> str:
    """The ID of the notebook image for these sources, building it only when its tag is missing."""
    return ensure_image(repo_root, force=force, cache_dir=cache_dir, progress=progress).id


def show_image(repo_root: Path | None = None, *, cache_dir: Path | None = None) -> dict:
    """What `enclave image build` would produce now, and the notebook images the engine holds."""
    repo_root = Path(repo_root or default_repo_root()).resolve()
    cache_dir = Path(cache_dir or default_cache_dir())
    image_dir = _image_dir(repo_root)
    client = _docker_client()
    wheelhouse = cache_dir / f"wheels-{requirements_key(image_dir / 'requirements.txt')}"
    current: dict = {"tag": None, "exists": False}
    if (wheelhouse / "SHA256SUMS").is_file():
        digest = content_hash(repo_root, wheel_manifest(wheelhouse), rootfs_key())
        tag = f"{IMAGE_REPOSITORY}:{digest[:HASH_LENGTH]}"
        found = _find_image(client, tag)
        current = {"tag": tag, "content_hash": digest, "exists": found is not None}
        if found is not None:
            current.update(_describe(found, tag, digest, built=False, seconds=0).as_dict())
            current.pop("built"), current.pop("seconds")
    else:
        current["why"] = "the wheelhouse is not downloaded yet; `enclave image build` fetches it"
    images = []
    for image in client.images.list(name=IMAGE_REPOSITORY):
        images.append({"id": image.id, "tags": sorted(image.tags), "size_bytes": int(image.attrs.get("Size", 0)),
                       "created": str(image.attrs.get("Created", ""))})
    images.sort(key=lambda entry: entry["created"], reverse=True)
    return {"current": current, "images": images, "base": f"{BASE_REPOSITORY}:{rootfs_key()}",
            "cache_dir": str(cache_dir), "checked_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
