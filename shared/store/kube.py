"""Builds the Kubernetes API client: in-cluster service account, else a kubeconfig file.

The SDK is imported here, on first use, not when function_app is imported: it is the largest
import of the HTTP path and a cold start should not pay for it before it is needed.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

# Enough pooled connections that concurrent invocations never queue for a socket.
POOL_SIZE = 32


def api_client(kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
        source = "in-cluster service account"
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        source = f"kubeconfig {kubeconfig or '~/.kube/config'}"
    configuration.connection_pool_maxsize = POOL_SIZE
    log.info("Kubernetes API %s via %s", configuration.host, source)
    return client.ApiClient(configuration)
