"""The scopes a token may carry (kept apart from :mod:`taskflow.api.auth` so the CLI can
name them without importing the web stack)."""

READ = "tasks:read"
"""Read jobs of the token's tenant."""
WRITE = "tasks:write"
"""Submit, cancel and retry jobs of the token's tenant."""
ADMIN = "admin"
"""Operators: read every tenant's jobs."""
SUBSCRIPTIONS = "subscriptions:write"
"""Manage the tenant's notification subscriptions and read its webhook signing secret
(``admin`` may too)."""
SCOPES = (READ, WRITE, ADMIN, SUBSCRIPTIONS)
