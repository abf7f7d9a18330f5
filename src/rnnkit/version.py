"""rnnkit's version, in a module of its own so that it is read without importing the package
(``pyproject.toml`` reads it statically; artifacts and exports record it)."""

__version__ = "0.1.0"
