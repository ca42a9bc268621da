"""Audit: one structured event per MCP operation, in a log of its own."""
