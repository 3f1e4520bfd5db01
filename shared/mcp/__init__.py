"""MCP tools for agents: the review queue, requests, the catalog and teams, as Azure Functions MCP
tool triggers (one function per tool, so the Portal shows each one's invocations and failures).

The Functions host's MCP extension speaks the protocol at `/runtime/webhooks/mcp` (locally the
local host does, on the official `mcp` SDK) and hands each call to its function as a JSON
invocation context: tool name, arguments, client info, the HTTP headers. Nothing here imports the
`mcp` SDK, so cold starts do not pay for it.

- `tools`: the tool catalogue: names, descriptions, typed properties; the trigger bindings come
  from it, and so does argument checking.
- `calls`: one call: who is calling (`auth`), checked arguments, the use case, the result.
- `blueprint`: the functions.
"""
