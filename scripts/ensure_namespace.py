"""Creates a namespace in the cluster named by KUBECONFIG unless it exists (used by scripts/run)."""

import sys

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException


def main(name: str) -> None:
    api = client.CoreV1Api(config.new_client_from_config())
    try:
        api.create_namespace({"metadata": {"name": name}})
        print(f"namespace {name} created", file=sys.stderr)
    except ApiException as exc:
        if exc.status != 409:
            raise


if __name__ == "__main__":
    main(sys.argv[1])
