"""What proxyrunner knows of MCP, and no more: no I/O and no aiohttp server code.

- ``jsonrpc``: JSON-RPC 2.0 messages as the proxy handles them (decode, encode, error
  codes, the bounded method peek used for labels).
- ``revisions``: protocol revisions, the MCP header names, and which revision a request
  claims.
- ``standard_headers``: the 2026-07-28 rule that ``Mcp-Method``/``Mcp-Name``/
  ``MCP-Protocol-Version`` mirror the body.
- ``rebinding``: the DNS-rebinding rule for a loopback listener.

The proxy is a router, not an MCP implementation: everything here exists because a
routing, refusal or labelling decision depends on it. Both HTTP faces (the proxy's and
the stdio bridge's) use these modules, so the protocol is spelled out once.
"""
