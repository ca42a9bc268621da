"""Authorization: Cedar policies in ToolHive's format, evaluated per MCP operation
(built and tested; not yet wired into the RunConfig)."""
