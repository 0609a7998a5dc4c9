"""`enclave deploy ...`: the images deploy/compose.yaml runs, built offline, and their env file.

No image registry is reachable, so the compose stack's images are made the way the notebook image
is (`enclave.hub.image`, whose steps this module calls rather than copies):

- `enclave-postgres:<hash12>`: a Debian bookworm rootfs from debootstrap with Debian's postgresql
  packages, `docker import`ed, and deploy/images/postgres/ on top;
- `enclave-service:<hash12>`: a bookworm rootfs with python3, nodejs and iptables, the host's
  configurable-http-proxy (npm's, pure JavaScript), a wheelhouse of the pinned closure of `enclave[gateway,review,hub,privacy]` made on the
  host (the versions this environment runs, torch's CPU wheel included; `pip wheel`, which also
  builds the few packages published as source only), and a wheel of this repository; deploy/images/service/ on top;
- the notebook image itself (`enclave.hub.image.ensure_image`), which the compose hub spawns.

Each tag's hash covers everything that goes into the image (Dockerfile and files, base packages,
the wheels' hashes, the repository's sources), so a second build with nothing changed asks Docker
for nothing and takes about a second. Rootfs tarballs and wheelhouses are cached under the
enclave's cache (`enclave.envsettings.cache_dir("image")`, shared with the notebook image).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, print_json
from enclave.errors import Unavailable

app = typer.Typer(help="The compose deployment (deploy/compose.yaml): its images, built offline.",
                  no_args_is_help=True)

SERVICE_REPOSITORY = "enclave-service"
POSTGRES_REPOSITORY = "enclave-postgres"
DEPLOY_BASE_REPOSITORY = "enclave-deploy-base"
# What each image's Debian base holds (debootstrap --include); changing a list rebuilds that base.
# Debian's node-configurable-http-proxy does not install under debootstrap (its node-* dependencies
# fail to configure there), so the image takes Debian's nodejs and the proxy the host runs (npm).
SERVICE_PACKAGES = ("python3", "python3-venv", "nodejs", "iptables")
POSTGRES_PACKAGES = ("postgresql",)
SERVICE_EXTRAS = ("gateway", "review", "hub", "privacy")


@dataclass(frozen=True)
class DeployImages:
    service: str
    postgres: str
    notebook: str
    built: list[str]
    seconds: float

    def as_env(self) -> dict[str, str]:
        """The variables compose.yaml takes the images from."""
        return {"ENCLAVE_SERVICE_IMAGE": self.service, "ENCLAVE_POSTGRES_IMAGE": self.postgres,
                "ENCLAVE_NOTEBOOK_IMAGE": self.notebook}


def _image():
    from enclave.hub import image  # the [hub] extra (docker SDK)

    return image


# --- bases -----------------------------------------------------------------------------------------

def base_key(packages: tuple[str, ...]) -> str:
    image = _image()
    spec = {"suite": image.DEBIAN_SUITE, "variant": image.DEBIAN_VARIANT, "include": sorted(packages),
            "prune": list(image.ROOTFS_PRUNE)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:image.HASH_LENGTH]


def ensure_rootfs(cache_dir: Path, name: str, packages: tuple[str, ...], progress) -> Path:
    """A cached bookworm rootfs tarball with `packages`, made with debootstrap (as root) when
    missing; pruned as the notebook image's base is."""
    image = _image()
    key = base_key(packages)
    tarball = cache_dir / f"rootfs-{name}-{image.DEBIAN_SUITE}-{key}.tar"
    if tarball.is_file():
        return tarball
    if os.geteuid() != 0:
        raise image.ImageBuildError("debootstrap needs root to make a base rootfs: run `enclave deploy build` as root once")
    if shutil.which("debootstrap") is None:
        raise image.ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    mirror = os.environ.get("ENCLAVE_DEBIAN_MIRROR", image.DEFAULT_MIRROR)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f"rootfs-{name}-") as work:
        target = Path(work) / "rootfs"
        progress(f"debootstrap {image.DEBIAN_SUITE} for the {name} image ({', '.join(packages)}) from {mirror}")
        started = time.monotonic()
        image._run(["debootstrap", f"--variant={image.DEBIAN_VARIANT}", f"--include={','.join(packages)}",
                    image.DEBIAN_SUITE, str(target), mirror], "debootstrap")
        for relative in image.ROOTFS_PRUNE:
            pruned = target / relative
            if pruned.is_dir():
                for child in pruned.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        partial = Path(work) / "rootfs.tar"
        image._run(["tar", "--numeric-owner", "-C", str(target), "-cf", str(partial), "."], "packing the rootfs")
        os.replace(partial, tarball)
        progress(f"{name} rootfs ready in {time.monotonic() - started:.0f} s: {tarball}")
    return tarball


def ensure_base(client, cache_dir: Path, name: str, packages: tuple[str, ...], progress) -> str:
    """The enclave-deploy-base:<name>-<key> image, imported from the cached rootfs when missing."""
    image = _image()
    tag = f"{name}-{base_key(packages)}"
    reference = f"{DEPLOY_BASE_REPOSITORY}:{tag}"
    if image._find_image(client, reference) is not None:
        return reference
    tarball = ensure_rootfs(cache_dir, name, packages, progress)
    progress(f"docker import {tarball.name} as {reference}")
    client.api.import_image_from_file(str(tarball), repository=DEPLOY_BASE_REPOSITORY, tag=tag,
                                      changes=["ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'])
    if image._find_image(client, reference) is None:
        raise image.ImageBuildError(f"docker import did not produce {reference}")
    return reference


# --- the service image's Python packages ------------------------------------------------------------

def service_requirements(repo_root: Path, extras: tuple[str, ...] = SERVICE_EXTRAS) -> list[str]:
    """`name==version` for every distribution `enclave[extras]` needs, at the versions installed
    here (this environment is the one the tests passed in), walked from the repository's
    pyproject.toml through each installed distribution's own requirements."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    pending: list[tuple[str, frozenset[str]]] = []

    def expand(requirement: str, extra: str = "") -> None:
        req = Requirement(requirement)
        if req.marker and not req.marker.evaluate({"extra": extra}):
            return
        if canonicalize_name(req.name) == "enclave":  # enclave[registry] inside an extra
            for inner in req.extras:
                for entry in optional.get(inner, []):
                    expand(entry)
            return
        pending.append((req.name, frozenset(req.extras)))

    for entry in project.get("dependencies", []):
        expand(entry)
    for extra in extras:
        for entry in optional.get(extra, []):
            expand(entry)
    pins: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, wanted = pending.pop()
        key = canonicalize_name(name)
        if (key, wanted) in done:
            continue
        done.add((key, wanted))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise _image().ImageBuildError(f"{name} is needed by the service image but not installed here "
                                           "(make installs every extra)") from None
        pins[key] = dist.version
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            pending.append((req.name, frozenset(req.extras)))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def ensure_service_wheelhouse(requirements: Path, cache_dir: Path, progress) -> Path:
    """The cached wheelhouse for the service image's pins: `pip wheel` on this host (same Debian
    release and machine as the image), which takes published wheels and builds the few packages
    published as source only (fpdf, say); the notebook image's `ensure_wheelhouse` takes wheels only."""
    image = _image()
    return image.build_wheelhouse(requirements, cache_dir / f"service-wheels-{image.requirements_key(requirements)}",
                                  ["wheel", "-w"], f"making the service wheelhouse for {requirements.name} (pip wheel)",
                                  progress)


# --- images ----------------------------------------------------------------------------------------

def _context_digest(directory: Path) -> list[tuple[str, str]]:
    image = _image()
    return image._tree_digest(directory, directory)


def _source_digest(repo_root: Path) -> list[tuple[str, str]]:
    image = _image()
    return (image._tree_digest(repo_root / "src" / "enclave", repo_root)
            + [("pyproject.toml", image._sha256_file(repo_root / "pyproject.toml")),
               ("output_review/policy.toml", image._sha256_file(repo_root / "output_review" / "policy.toml"))])


def proxy_dir() -> Path:
    """The configurable-http-proxy package this host runs (npm install -g; pure JavaScript)."""
    found = shutil.which("configurable-http-proxy")
    if found is None:
        raise _image().ImageBuildError("configurable-http-proxy is not installed here (npm install -g "
                                       "configurable-http-proxy; `make` does it)")
    package = Path(found).resolve().parents[1]
    if not (package / "package.json").is_file():
        raise _image().ImageBuildError(f"{found} is not in an npm package folder")
    return package


def _tag(repository: str, parts: dict) -> tuple[str, str]:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return f"{repository}:{digest[:_image().HASH_LENGTH]}", digest


def ensure_postgres_image(client, repo_root: Path, cache_dir: Path, progress) -> tuple[str, bool]:
    image = _image()
    context_dir = repo_root / "deploy" / "images" / "postgres"
    tag, digest = _tag(POSTGRES_REPOSITORY, {"base": base_key(POSTGRES_PACKAGES), "context": _context_digest(context_dir)})
    if image._find_image(client, tag) is not None:
        return tag, False
    base = ensure_base(client, cache_dir, "postgres", POSTGRES_PACKAGES, progress)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="context-postgres-") as work:
        shutil.copytree(context_dir, work, dirs_exist_ok=True)
        progress(f"docker build {tag} (network disabled)")
        image._docker_build(client, Path(work), tag, {"BASE_IMAGE": base, "CONTENT_HASH": digest}, nocache=False,
                            progress=progress)
    return tag, True


def ensure_service_image(client, repo_root: Path, cache_dir: Path, progress) -> tuple[str, bool]:
    image = _image()
    context_dir = repo_root / "deploy" / "images" / "service"
    pins = "\n".join(service_requirements(repo_root)) + "\n"
    requirements = cache_dir / f"service-requirements-{hashlib.sha256(pins.encode()).hexdigest()[:12]}.txt"
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not requirements.is_file():
        requirements.write_text(pins)
    wheelhouse = ensure_service_wheelhouse(requirements, cache_dir, progress)
    tag, digest = _tag(SERVICE_REPOSITORY, {
        "base": base_key(SERVICE_PACKAGES), "context": _context_digest(context_dir),
        "wheels": sorted(image.wheel_manifest(wheelhouse)), "sources": _source_digest(repo_root),
        "proxy": _context_digest(proxy_dir())})
    if image._find_image(client, tag) is not None:
        return tag, False
    base = ensure_base(client, cache_dir, "service", SERVICE_PACKAGES, progress)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="context-service-") as work:
        context = Path(work)
        shutil.copytree(context_dir, context, dirs_exist_ok=True)
        shutil.copy2(requirements, context / "requirements.txt")
        shutil.copy2(repo_root / "output_review" / "policy.toml", context / "policy.toml")
        shutil.copytree(proxy_dir(), context / "configurable-http-proxy", symlinks=True)
        (context / "wheels").mkdir()
        for name, _ in image.wheel_manifest(wheelhouse):
            image._link_or_copy(wheelhouse / name, context / "wheels" / name)
        (context / "local").mkdir()
        progress("building the wheel of this repository")
        isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
        with tempfile.TemporaryDirectory(prefix="enclave-src-") as source:
            # A clean copy: the wheel carries src/enclave and the metadata, nothing else of the checkout.
            shutil.copytree(repo_root / "src", Path(source) / "src",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
            for name in ("pyproject.toml", "README.md"):
                shutil.copy2(repo_root / name, Path(source) / name)
            image._run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                        *isolation, "-w", str(context / "local"), source], "pip wheel (enclave)")
        progress(f"docker build {tag} (network disabled)")
        image._docker_build(client, context, tag, {"BASE_IMAGE": base, "CONTENT_HASH": digest}, nocache=False,
                            progress=progress)
    return tag, True


def prune_old_images(client, repository: str, keep: int, progress) -> None:
    """Untag all but the `keep` newest images of `repository`, so rebuilds do not pile up; one a
    container still uses stays (Docker refuses), as with the notebook image."""
    from docker.errors import APIError

    images = sorted(client.images.list(name=repository), key=lambda i: str(i.attrs.get("Created", "")), reverse=True)
    removed = 0
    for old in images[keep:]:
        for tag in old.tags:
            if tag.startswith(f"{repository}:"):
                try:
                    client.images.remove(tag)
                    removed += 1
                except APIError:
                    pass
    if removed:
        progress(f"removed {removed} older {repository} image tag(s), keeping the newest {keep}")


def build_images(repo_root: Path | None = None, cache_dir: Path | None = None, progress=None) -> DeployImages:
    """Find or build the compose stack's three images (see the module docstring)."""
    image = _image()
    progress = progress or image.stderr_progress
    started = time.monotonic()
    repo_root = Path(repo_root or image.default_repo_root()).resolve()
    cache_dir = Path(cache_dir or image.default_cache_dir())
    notebook = image.ensure_image(repo_root, cache_dir=cache_dir, progress=progress)
    client = image._docker_client()
    try:
        with image._build_lock(cache_dir):
            postgres, postgres_built = ensure_postgres_image(client, repo_root, cache_dir, progress)
            service, service_built = ensure_service_image(client, repo_root, cache_dir, progress)
            for repository, built_now in ((POSTGRES_REPOSITORY, postgres_built), (SERVICE_REPOSITORY, service_built)):
                if built_now:
                    prune_old_images(client, repository, image.KEEP_IMAGES, progress)
    finally:
        client.close()
    built = [tag for tag, yes in ((notebook.tag, notebook.built), (postgres, postgres_built), (service, service_built))
             if yes]
    # The notebook image by ID: the hub pins it so (ENCLAVE_NOTEBOOK_IMAGE).
    return DeployImages(service=service, postgres=postgres, notebook=notebook.id, built=built,
                        seconds=round(time.monotonic() - started, 2))


@app.command("build")
def build(
    as_json: AsJson = False,
    repo: Annotated[Optional[Path], typer.Option("--repo", metavar="DIR", help="Repository root (default: the one enclave runs from).")] = None,
    env_file: Annotated[Optional[Path], typer.Option("--env-file", metavar="FILE", help="Also write the image variables (ENCLAVE_*_IMAGE=...) to FILE, for docker-compose --env-file.")] = None,
) -> None:
    """Build the compose stack's images offline (PostgreSQL, the services, the notebook), unless they exist."""
    image = _image()
    try:
        images = build_images(repo)
    except image.ImageBuildError as exc:
        raise Unavailable(str(exc)) from exc
    if env_file is not None:
        env_file.write_text("".join(f"{k}={v}\n" for k, v in images.as_env().items()))
    if as_json:
        print_json(asdict(images))
        return
    for name, value in images.as_env().items():
        typer.echo(f"{name}={value}")
    typer.echo(f"built: {', '.join(images.built) or 'nothing (all up to date)'} in {images.seconds:.1f} s")
