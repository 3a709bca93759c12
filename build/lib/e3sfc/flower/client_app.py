"""``clientapp`` component of the Flower app (see ``[tool.flwr.app]`` in pyproject.toml)."""

from .apps import make_client_app

app = make_client_app()
