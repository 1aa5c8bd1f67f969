"""An example mmrobust contribution: each file is one registry entry, declared in pyproject.toml."""
