"""computer_use_task.desktop_vm_id points at a VM of the same project.

0003 created the column before desktop_virtual_machine existed (0005); this adds the
composite foreign key, so a computer-use task can never target another organization's
or another project's VM. Deleting the VM keeps the task and clears the target.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        alter table computer_use_task
          add constraint computer_use_task_desktop_vm_fkey
          foreign key (organization_id, project_id, desktop_vm_id)
          references desktop_virtual_machine (organization_id, project_id, id)
          on delete set null (desktop_vm_id);
        """,
    )


def downgrade() -> None:
    exec_script(op.get_bind(), "alter table computer_use_task drop constraint computer_use_task_desktop_vm_fkey;")
