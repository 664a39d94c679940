"""Attribute types, declared schemas and the typed frames of write payloads."""
