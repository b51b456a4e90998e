"""Storage: the database tables, their migrations and every query (`Store`)."""

from llmgate.storage.store import DuplicateError, MissingError, Store, create_store

__all__ = ["DuplicateError", "MissingError", "Store", "create_store"]
