"""The plugin's version: the offload release whose image it runs (Cargo.toml's version)."""

__version__ = "0.1.0"
