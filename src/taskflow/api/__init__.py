"""The HTTP API role (``taskflow serve``): a Litestar app over the job store."""

from taskflow.api.app import create_app

__all__ = ["create_app"]
