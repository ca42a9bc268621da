"""The MCPServer controller behind ``proxyrunner operator``.

It turns each ``MCPServer`` (toolhive.stacklok.dev/v1alpha1) into the RunConfig
ConfigMap, the proxy Deployment, its Service, ServiceAccount, Role and RoleBinding, all
server-side applied and owned by the resource, and reports status back. Pure parts
(``spec``, ``children``, ``conditions``) are apart from the I/O that uses them
(``objects``, ``reconcile``, ``controller``, ``leader``); ``runner`` puts them together.
"""
