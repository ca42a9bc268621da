"""The OAuth 2.1 resource server: access tokens validated (JWT against the issuer's keys, or
RFC 7662 introspection), protected-resource metadata, outbound credentials."""
