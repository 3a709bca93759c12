"""``serverapp`` component of the Flower app (see ``[tool.flwr.app]`` in pyproject.toml)."""

from .apps import make_server_app

app = make_server_app()
