"""The registry's tables, as SQLAlchemy Core objects for queries. Migrations (in
migrations/versions) create and change them; this file must describe the latest one.

Each resource is stored whole, as its proto's JSON, next to the few columns the database
must know about: the name (key), the parent model (cascades, lists), the references it
enforces (a deployment's version), and the etag. Filtering and ordering happen in Python
over the decoded resources, so a filter means the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Text

metadata = MetaData()

models = Table(
    "models",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("body", Text, nullable=False),
    Column("etag", String(64), nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("name", String(256), primary_key=True),
    Column("model", String(128), ForeignKey("models.name", ondelete="RESTRICT"), nullable=False, index=True),
    Column("is_default", Boolean, nullable=False, default=False),
    Column("body", Text, nullable=False),
    Column("etag", String(64), nullable=False),
)

deployments = Table(
    "deployments",
    metadata,
    Column("name", String(256), primary_key=True),
    Column("model", String(128), ForeignKey("models.name", ondelete="RESTRICT"), nullable=False, index=True),
    Column("version", String(256), ForeignKey("model_versions.name", ondelete="RESTRICT"), nullable=False, index=True),
    Column("body", Text, nullable=False),
    Column("etag", String(64), nullable=False),
)

# The watch feed: every change, in commit order (writers are serialized, see database.py).
changes = Table(
    "changes",
    metadata,
    Column("sequence", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("name", String(256), nullable=False),
    Column("resource_type", String(32), nullable=False),
    Column("body", Text, nullable=False),
    Column("change_time", DateTime(timezone=True), nullable=False),
)

# API keys: the secret itself is never stored, only its SHA-256 (a random 256-bit
# secret needs no slow hash: there is nothing to guess).
api_keys = Table(
    "api_keys",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("body", Text, nullable=False),
)

# Administrative actions: who did what to which resource, when, and how it ended.
audit_log = Table(
    "audit_log",
    metadata,
    Column("sequence", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("principal", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("resource", String(256), nullable=False),
    Column("result", String(32), nullable=False),
    Column("detail", Text, nullable=False),
)
