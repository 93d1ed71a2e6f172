"""The specs as package data (this folder is installed as conformance.specs)."""
