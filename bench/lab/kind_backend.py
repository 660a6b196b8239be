"""deploy/kind/echo-backend.yaml: the e2e backend (bench/lab/backend.py) as the ConfigMap the
kind cluster's echo Deployment runs. Generated, because kustomize reads no file outside the
kustomization's directory (stock `kubectl apply -k deploy/kind` refuses one), and checked by
tests/test_deploy.py so it cannot drift: `make readme` (or `python -m bench.lab.kind_backend`)
writes it again."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "bench" / "lab" / "backend.py"
TARGET = ROOT / "deploy" / "kind" / "echo-backend.yaml"
HEADER = "# Generated from bench/lab/backend.py by `make readme`: do not edit.\n"


class _Literal(str):
    """A string dumped as a YAML block literal, so the code stays readable."""


class _Dumper(yaml.SafeDumper):
    pass


def _literal(dumper: yaml.SafeDumper, text: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")


_Dumper.add_representer(_Literal, _literal)


def render() -> str:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "echo-backend", "namespace": "echo"},
        "data": {"backend.py": _Literal(SOURCE.read_text())},
    }
    return HEADER + yaml.dump(config_map, Dumper=_Dumper, sort_keys=False, width=100)


def main() -> int:
    TARGET.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
