"""The images `make images` builds, run as the manifests run them. Skipped, with the reason,
where no Docker engine answers or the images were not built (`make test` builds them
whenever an engine answers; CI starts one)."""

from __future__ import annotations

import subprocess

import pytest

from bench.lab.images import (
    BASE_TAG,
    ENVOY_TAG,
    PROJECT_TAGS,
    RECIPE_LABEL,
    docker_unavailable,
    image_labels,
)

LOCKED = ["--rm", "--read-only", "--network", "none", "--cap-drop", "ALL",
          "--security-opt", "no-new-privileges"]  # fmt: skip


def _missing() -> str | None:
    reason = docker_unavailable()
    if reason is not None:
        return reason
    absent = [tag for tag in (BASE_TAG, PROJECT_TAGS[0], ENVOY_TAG) if image_labels(tag) is None]
    return f"not built (make images): {', '.join(absent)}" if absent else None


MISSING = _missing()
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
]


def run(image: str, *argv: str, entrypoint: str | None = None) -> str:
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    done = subprocess.run(
        ["docker", "run", *LOCKED, *extra, image, *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_project_image_runs_locked_down_as_the_manifests_run_it() -> None:
    image = PROJECT_TAGS[0]
    assert run(image, "id", "-u").strip() == "65532"
    assert run(image, "shutdown-manager", "--version").strip() == "shutdown-manager 0.1.0"
    assert "serve" in run(image, "xds-server", "--help")


def test_every_module_the_image_runs_is_compiled() -> None:
    """Read-only root: a module without bytecode would be compiled again at every start."""
    script = (
        "import pathlib, sys\n"
        "venv = pathlib.Path(sys.prefix)\n"
        "bare = [str(p) for p in venv.rglob('*.py') if not "
        "(p.parent / '__pycache__' / f'{p.stem}.{sys.implementation.cache_tag}.pyc').exists()]\n"
        "print(len(list(venv.rglob('*.pyc'))), len(bare), *bare[:5])\n"
    )
    compiled, bare, *examples = run(PROJECT_TAGS[0], "python", "-c", script).split()
    assert int(compiled) > 1000
    assert int(bare) == 0, examples


def test_the_image_has_no_pip_and_was_built_from_a_recorded_recipe() -> None:
    image = PROJECT_TAGS[0]
    probe = subprocess.run(["docker", "run", *LOCKED, image, "pip", "--version"],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert probe.returncode != 0, "pip stays in the build stage"
    for tag in (BASE_TAG, image, ENVOY_TAG):
        labels = image_labels(tag)
        assert labels is not None
        assert len(labels.get(RECIPE_LABEL, "")) == 16, tag


def test_the_envoy_image_is_the_binary_and_what_it_links_as_uid_65532() -> None:
    assert "1.40.0" in run(ENVOY_TAG, "--version")
    user = subprocess.run(["docker", "image", "inspect", "--format", "{{.Config.User}}", ENVOY_TAG],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert user == "65532:65532"
    created = subprocess.run(["docker", "create", ENVOY_TAG], capture_output=True, text=True,
                             check=True).stdout.strip()  # fmt: skip
    try:
        listing = subprocess.run(f"docker export {created} | tar -t", shell=True,
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
    finally:
        subprocess.run(["docker", "rm", created], capture_output=True, check=False)
    files = [line for line in listing.splitlines() if not line.endswith("/")]
    runtime = ("dev/", "proc/", "sys/", "etc/hosts", "etc/hostname", "etc/resolv.conf", ".docker")
    ours = [f for f in files if not f.startswith(runtime)]
    assert "usr/local/bin/envoy" in ours
    assert len(ours) <= 12, ours
