"""YAML configs shipped with metaopt."""
