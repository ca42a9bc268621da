"""proxyrunner: an async proxy that fronts MCP servers, locally or on Kubernetes."""

__version__ = "0.1.0"
