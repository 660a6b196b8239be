"""A certificate store kept in a `kubernetes.io/tls` Secret, for `xds-server certs
--kube-namespace NS`: the same reads and writes as a secret-volume directory.

A Secret update is atomic in the API, and the kubelet projects it into every pod that mounts
it with the same `..data` swap our directory store uses: pods see the old files or the new
ones. A write is checked before it is sent, and carries the resourceVersion it read, so two
writers cannot overwrite each other (the loser gets 409 Conflict and changes nothing).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

from xds_server.certs.secret_volume import Version
from xds_server.kube_api import REQUEST_TIMEOUT, read_json

SECRET_NAMES = {"ca": "xds-server-ca", "server": "xds-server-tls", "envoy": "envoy-tls"}


class SecretStore:
    def __init__(self, core: Any, namespace: str, name: str) -> None:
        self.core = core
        self.namespace = namespace
        self.name = name
        self._version: str | None = None

    @property
    def where(self) -> str:
        return f"secret {self.namespace}/{self.name}"

    def exists(self) -> bool:
        return self._get() is not None

    def current(self) -> str | None:
        secret = self._get()
        return None if secret is None else str(secret["metadata"]["resourceVersion"])

    def read(self) -> Version | None:
        secret = self._get()
        if secret is None:
            return None
        self._version = str(secret["metadata"]["resourceVersion"])
        data = secret.get("data") or {}
        files = {key: base64.b64decode(value) for key, value in data.items()}
        return Version(self._version, files)

    def write(
        self,
        files: Mapping[str, bytes],
        check: Callable[[dict[str, bytes]], object] | None = None,
    ) -> str:
        if check is not None:
            check(dict(files))
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/part-of": "envoy-lifecycle"},
            },
            "data": {key: base64.b64encode(value).decode() for key, value in files.items()},
        }
        if self._version is None and self._get() is None:
            created = self.core.create_namespaced_secret(
                self.namespace, body, _request_timeout=REQUEST_TIMEOUT
            )
            self._version = str(created.metadata.resource_version)
        else:
            body["metadata"]["resourceVersion"] = self._version
            replaced = self.core.replace_namespaced_secret(
                self.name, self.namespace, body, _request_timeout=REQUEST_TIMEOUT
            )
            self._version = str(replaced.metadata.resource_version)
        return self._version

    def _get(self) -> dict[str, Any] | None:
        return read_json(self.core.read_namespaced_secret, self.name, self.namespace)


def secret_stores(namespace: str, kubeconfig: str | None = None) -> dict[str, SecretStore]:
    """The three stores of `xds-server certs` in a namespace (in-cluster or a kubeconfig)."""
    from kubernetes import client, config

    if kubeconfig is not None:
        api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        api_client = client.ApiClient()
    core = client.CoreV1Api(api_client)
    return {store: SecretStore(core, namespace, name) for store, name in SECRET_NAMES.items()}
