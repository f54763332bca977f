"""The jobs service's tables, in the registry's database (the registry's migration 0004
creates them: one database, one migration history). Timestamps are Unix seconds, as
OpenAI's objects carry them."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Integer, LargeBinary, MetaData, String, Table, Text

metadata = MetaData()

# Uploaded files and the output and error files batches write; each belongs to a caller.
files = Table(
    "job_files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(256), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),
    Column("filename", String(512), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),
)

# A batch: its status column (what the runner looks for) and the rest of its OpenAI
# object as JSON; `caller` is the owner's identity, which the runner's calls carry.
batches = Table(
    "job_batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(256), nullable=False, index=True),
    Column("caller", Text, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
)

# One row per line of a batch's input: pending until its result is recorded, once.
items = Table(
    "job_batch_items",
    metadata,
    Column("batch_id", String(64), ForeignKey("job_batches.id", ondelete="CASCADE"), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("custom_id", String(512), nullable=False),
    Column("url", String(128), nullable=False),
    Column("body", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending, succeeded, failed
    Column("result", Text, nullable=True),  # the output file's line, once recorded
)
