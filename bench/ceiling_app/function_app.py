"""The thinnest function the local host can serve on the intake path, for bench/intake.py.

POST /api/request-key creates one Secret of a request Secret's size through the app's own write
path (SecretsGateway on the shared/store/kube.py client) and answers 201: no validation, no
reads, no rules. Loaded like the app, it measures what the host and one create cost together,
the most any intake path on this host can reach.
"""

import json
import os
import threading
import uuid

import azure.functions as func

from shared.domain.request import KeyRequest
from shared.store import codec
from shared.store.kube import api_client
from shared.store.secrets import SecretsGateway

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
_lock = threading.Lock()
_gateway: list[SecretsGateway] = []


def gateway() -> SecretsGateway:
    with _lock:
        if not _gateway:
            _gateway.append(SecretsGateway(api_client(os.environ["KUBECONFIG"]), os.environ["KUBERNETES_NAMESPACE"]))
    return _gateway[0]


@app.route(route="health", methods=["GET"])
def health(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("{}", status_code=200, mimetype="application/json")


@app.route(route="api/request-key", methods=["POST"])
def request_key(req: func.HttpRequest) -> func.HttpResponse:
    asked = req.get_json()
    body = codec.to_secret(KeyRequest.new(asked["email"], asked["llm"]))
    body["metadata"]["name"] = f"bench-ceiling-{uuid.uuid4().hex}"
    body["metadata"]["labels"][codec.COMPONENT_LABEL] = "bench-ceiling-sec"  # never swept or counted
    gateway().create(body)
    return func.HttpResponse(json.dumps({"request_id": body["metadata"]["name"]}), status_code=201,
                             mimetype="application/json")
