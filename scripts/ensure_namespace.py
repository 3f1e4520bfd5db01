"""Creates namespaces in the cluster named by KUBECONFIG unless they exist (used by scripts/run:
the app's KUBERNETES_NAMESPACE, its KUBERNETES_ARCHIVE_NAMESPACE and the teams' TEAM_KEYS_NAMESPACE)."""

import sys

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException


def main(names: list[str]) -> None:
    api = client.CoreV1Api(config.new_client_from_config())
    for name in dict.fromkeys(names):
        try:
            api.create_namespace({"metadata": {"name": name}})
            print(f"namespace {name} created", file=sys.stderr)
        except ApiException as exc:
            if exc.status != 409:
                raise


if __name__ == "__main__":
    main(sys.argv[1:])
