"""The Azure Functions app: builds the FunctionApp and registers the blueprints.

Each HTTP endpoint and each MCP tool is its own function (so the Portal shows each one's
invocations and failures); the approval timer runs the processor every APPROVAL_SCHEDULE. Settings and
config.yaml are validated here, at start-up: a bad value stops the app with the file, the
field and the reason.
"""

import azure.functions as func

from shared import context
from shared.http.admin import bp as admin
from shared.http.docs import bp as docs
from shared.http.links import bp as links
from shared.http.openapi import bp as openapi
from shared.http.public import bp as public
from shared.http.teams import bp as teams
from shared.mcp.blueprint import bp as mcp
from shared.timer import bp as timer

context.load()

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(public)
app.register_functions(admin)
app.register_functions(links)
app.register_functions(openapi)
app.register_functions(docs)
app.register_functions(teams)
app.register_functions(mcp)
app.register_functions(timer)
