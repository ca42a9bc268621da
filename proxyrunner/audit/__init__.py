"""Audit: one structured event per MCP operation, in a log of its own, in ToolHive's
event shape (built and tested; not yet wired into the RunConfig)."""
