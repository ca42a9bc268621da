"""The demo MCP server: what the embedded default proxies, and the suite's SDK-built backend.

It is an ordinary MCP server made with the official Python SDK, configured the way
ToolHive configures containers: ``MCP_TRANSPORT`` (streamable-http, sse or stdio),
``MCP_HOST`` and ``MCP_PORT``. ``DEMO_BACKEND_ID`` names it in ``whoami`` so that tests
and curious users can see which backend served a call; ``DEMO_STATELESS=1`` serves
without sessions and ``DEMO_JSON_RESPONSE=1`` answers requests with JSON bodies instead
of event streams (the two forms a proxy has to handle).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from mcp import types
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel

_MAX_SLEEP = 60.0


class Answer(BaseModel):
    answer: str


def build_server(identity: str) -> MCPServer:
    server = MCPServer("proxyrunner-demo", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    @server.tool()
    def whoami() -> str:
        """Which backend process answered: its identity and pid, as JSON."""
        return json.dumps({"id": identity, "pid": os.getpid()})

    notes: list[str] = []

    @server.tool()
    def remember(note: str) -> str:
        """Keep a note in this server process (every session it serves shares it) and
        return every note kept so far, one per line: state a process holds for its clients."""
        notes.append(note)
        return "\n".join(notes)

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Wait, then answer: a long tool call (at most 60 seconds)."""
        seconds = max(0.0, min(float(seconds), _MAX_SLEEP))
        await asyncio.sleep(seconds)
        return f"slept {seconds:g}s"

    @server.tool()
    async def ask(question: str, ctx: Context, delay: float = 0.0) -> str:
        """Report progress 0, wait ``delay`` seconds (at most 60), then ask the client's
        user the question (elicitation) and return the answer, or how they declined."""
        await ctx.report_progress(0, 1)
        await asyncio.sleep(max(0.0, min(float(delay), _MAX_SLEEP)))
        result = await ctx.elicit(question, Answer)
        return result.data.answer if result.action == "accept" else result.action

    @server.tool()
    async def sample(prompt: str, ctx: Context, delay: float = 0.0) -> str:
        """Report progress 0, wait ``delay`` seconds (at most 60), then ask the client's
        model for a completion of the prompt (sampling) and return its text."""
        await ctx.report_progress(0, 1)
        await asyncio.sleep(max(0.0, min(float(delay), _MAX_SLEEP)))
        message = types.SamplingMessage(
            role="user", content=types.TextContent(type="text", text=prompt)
        )
        result = await ctx.request_context.session.create_message([message], max_tokens=100)
        content = result.content
        return content.text if isinstance(content, types.TextContent) else str(content)

    @server.tool()
    def headers(ctx: Context) -> str:
        """The HTTP headers this server received with the call, as JSON: what the proxy
        in front passed on (lowercase names)."""
        request = ctx.request_context.request
        received = getattr(request, "headers", None) or {}
        return json.dumps({str(k).lower(): str(v) for k, v in received.items()})

    @server.prompt()
    def greeting(name: str = "world") -> str:
        """A greeting for ``name``."""
        return f"Say hello to {name}."

    @server.resource("demo://readme", mime_type="text/plain")
    def readme() -> str:
        """What this server is."""
        return "proxyrunner's demo MCP server"

    @server.resource("demo://secret", mime_type="text/plain")
    def secret() -> str:
        """A resource that authorization policies usually keep to admins."""
        return "only for admins"

    return server


def main() -> int:
    transport = os.environ.get("MCP_TRANSPORT", "streamable-http")
    host = os.environ.get("MCP_HOST", "127.0.0.1")
    port = int(os.environ.get("MCP_PORT", "8000"))
    identity = os.environ.get("DEMO_BACKEND_ID") or f"{host}:{port}"
    server = build_server(identity)
    if transport == "stdio":
        server.run("stdio")
    elif transport == "sse":
        server.run("sse", host=host, port=port)
    elif transport == "streamable-http":
        server.run(
            "streamable-http",
            host=host,
            port=port,
            stateless_http=os.environ.get("DEMO_STATELESS") == "1",
            json_response=os.environ.get("DEMO_JSON_RESPONSE") == "1",
        )
    else:
        sys.stderr.write(
            f"MCP_TRANSPORT must be streamable-http, sse or stdio, got {transport!r}\n"
        )
        return 2
    return 0
