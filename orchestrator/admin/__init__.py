"""The controller's admin HTTP API (app.py), its client (client.py) and its token (token.py)."""

PREFIX = "/admin/v1"  # every admin route lives under it
