"""index the pages of GET /jobs: newest first by (created_at, id), within a function, a status, or both

The filtered pages order by (created_at, id) like the first page: with the id in the index, a page
is an index range read of `limit` entries, wherever its cursor points, with no sort.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_invocations_function_created", table_name="invocations")
    op.drop_index("ix_invocations_status_created", table_name="invocations")
    op.create_index("ix_invocations_function_created", "invocations", ["function", "created_at", "id"])
    op.create_index("ix_invocations_status_created", "invocations", ["status", "created_at", "id"])
    op.create_index("ix_invocations_function_status_created", "invocations", ["function", "status", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_invocations_function_status_created", table_name="invocations")
    op.drop_index("ix_invocations_status_created", table_name="invocations")
    op.drop_index("ix_invocations_function_created", table_name="invocations")
    op.create_index("ix_invocations_status_created", "invocations", ["status", "created_at"])
    op.create_index("ix_invocations_function_created", "invocations", ["function", "created_at"])
