"""Image benchmark: what `make images` built, measured in containers as the manifests run them
(read-only root filesystem, uid 65532, no network, all capabilities dropped).

Run: `make bench-images` (after `make images`). Prints markdown tables:

1. Sizes of the three images.
2. Start times (median of runs): the CLI, the preStop hook up to its first action (the
   hook's start delays the drain and its minimum), and the control plane's import, with the
   compiled bytecode the image ships and with none (as in base images that strip `.pyc`
   files, where every start compiles again: the root filesystem is read-only).
3. Idle memory of the long-running commands (`docker stats`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lab.images import BASE_TAG, ENVOY_TAG, PROJECT_TAGS, docker_unavailable

PROJECT = PROJECT_TAGS[1]
CONTAINER = "bench-images"
LOCKED = ["--read-only", "--network", "none", "--cap-drop", "ALL",
          "--security-opt", "no-new-privileges", "--user", "65532:65532"]  # fmt: skip
NO_BYTECODE = "find / -xdev -name '*.pyc' -delete && "
"""Every compiled module gone, the standard library's included (as in images that strip them)."""
COMMANDS = {
    "`shutdown-manager --version`": "shutdown-manager --version",
    "preStop hook to its first action": (
        "shutdown-manager drain --control-socket /nonexistent/s.sock "
        "--admin-address unix:///nonexistent/admin.sock --drain-timeout 1s; true"
    ),
    "`import xds_server.app`": "python -c 'import xds_server.app'",
}


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def size_mb(tag: str) -> float:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag)) / 1e6


def timed_inside(shell: str) -> float:
    """Seconds the command itself took inside a running container (not docker's start)."""
    script = f"s=$(date +%s.%N); {{ {shell}; }} >/dev/null 2>&1; e=$(date +%s.%N); echo $s $e"
    return _elapsed(docker("exec", CONTAINER, "sh", "-c", script))


def _elapsed(output: str) -> float:
    start, end = (float(x) for x in output.split())
    return end - start


def start_times(runs: int) -> list[tuple[str, float, float]]:
    """(command, with bytecode, without) medians, in one long-lived container each way."""
    rows = {name: [0.0, 0.0] for name in COMMANDS}
    for column, prefix, extra in ((0, "", LOCKED), (1, NO_BYTECODE, ["--user", "0"])):
        subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)
        docker("run", "-d", "--name", CONTAINER, *extra, "--entrypoint", "sleep", PROJECT, "600")
        try:
            if prefix:
                docker("exec", CONTAINER, "sh", "-c", prefix + "true")
            for name, command in COMMANDS.items():
                shell = ("export PYTHONDONTWRITEBYTECODE=1 && " if prefix else "") + command
                timed_inside(shell)  # warm the page cache
                rows[name][column] = statistics.median(timed_inside(shell) for _ in range(runs))
        finally:
            subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)
    return [(name, a, b) for name, (a, b) in rows.items()]


def idle_memory() -> list[tuple[str, str]]:
    serve = "shutdown-manager serve --listen 127.0.0.1:8090 --control-socket /tmp/sm.sock"
    xds = "xds-server serve --manifests /tmp --insecure"
    commands = {
        "`shutdown-manager serve`": serve.split(),
        "`xds-server serve --manifests` (empty)": xds.split(),
    }
    found = []
    for name, argv in commands.items():
        cid = docker("run", "-d", *LOCKED, "--tmpfs", "/tmp", PROJECT, *argv).strip()
        try:
            time.sleep(3)
            stats = json.loads(docker("stats", "--no-stream", "--format", "{{json .}}", cid))
            found.append((name, stats["MemUsage"].split("/")[0].strip()))
        finally:
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="runs per start time (median)")
    args = parser.parse_args()
    reason = docker_unavailable()
    if reason is not None:
        print(f"bench-images: {reason}", file=sys.stderr)
        return 1
    print("| image | size |\n| --- | --- |")
    for tag in (BASE_TAG, PROJECT, ENVOY_TAG):
        print(f"| `{tag}` | {size_mb(tag):.0f} MB |")
    print("\n| start (inside the image) | with bytecode | without |\n| --- | --- | --- |")
    for name, compiled, bare in start_times(args.runs):
        print(f"| {name} | {compiled:.2f} s | {bare:.2f} s |")
    print("\n| idle memory | usage |\n| --- | --- |")
    for name, usage in idle_memory():
        print(f"| {name} | {usage} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
