"""Placeholder until its owner lands it; registers nothing."""


def register(subparsers) -> None:  # noqa: ANN001
    return None
