"""Authorization: Cedar policies in ToolHive's format, evaluated per MCP operation."""
