"""Models, versions, deployments and the change feed.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("model", sa.String(128), sa.ForeignKey("models.name", ondelete="RESTRICT"), nullable=False),
        sa.Column("is_default", sa.Boolean, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
    )
    op.create_index("ix_model_versions_model", "model_versions", ["model"])
    op.create_table(
        "deployments",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("model", sa.String(128), sa.ForeignKey("models.name", ondelete="RESTRICT"), nullable=False),
        sa.Column("version", sa.String(256), sa.ForeignKey("model_versions.name", ondelete="RESTRICT"), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
    )
    op.create_index("ix_deployments_model", "deployments", ["model"])
    op.create_index("ix_deployments_version", "deployments", ["version"])
    op.create_table(
        "changes",
        sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("resource_type", sa.String(32), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("change_time", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in ("changes", "deployments", "model_versions", "models"):
        op.drop_table(table)
