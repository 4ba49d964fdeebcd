"""Persistence layer: database engine and sessions, ORM models, migrations, object storage.

Nothing here knows about gRPC or business rules; see docs/ARCHITECTURE.md.
"""
