"""The operations layer: logging (the call line, security events), Prometheus metrics, deploy checks.

It imports the core only."""
