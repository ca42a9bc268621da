"""OpenTelemetry for the proxy: W3C context propagation (headers and ``_meta``), the MCP
semantic conventions, a drop-don't-block span exporter, and the runtime that ties them to
``telemetry_config``. See ``runtime`` for what exists when telemetry is off (nothing)."""
