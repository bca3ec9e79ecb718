"""Create the instances and messages tables.

Revision ID: 0001
Revises: (none)
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('instances',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('public_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('token_digest', sa.String(length=64), nullable=False),
    sa.Column('integration', sa.String(length=32), nullable=False),
    sa.Column('connection_status', sa.String(length=16), nullable=False),
    sa.Column('number', sa.String(length=15), nullable=True),
    sa.Column('profile_name', sa.String(length=128), nullable=True),
    sa.Column('profile_pic_url', sa.String(length=1024), nullable=True),
    sa.Column('reject_call', sa.Boolean(), nullable=False),
    sa.Column('msg_call', sa.Text(), nullable=False),
    sa.Column('groups_ignore', sa.Boolean(), nullable=False),
    sa.Column('always_online', sa.Boolean(), nullable=False),
    sa.Column('read_messages', sa.Boolean(), nullable=False),
    sa.Column('read_status', sa.Boolean(), nullable=False),
    sa.Column('sync_full_history', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_instances')),
    sa.UniqueConstraint('name', name=op.f('uq_instances_name')),
    sa.UniqueConstraint('public_id', name=op.f('uq_instances_public_id')),
    sa.UniqueConstraint('token_digest', name=op.f('uq_instances_token_digest'))
    )
    op.create_table('messages',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('instance_pk', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.String(length=128), nullable=False),
    sa.Column('remote_jid', sa.String(length=128), nullable=False),
    sa.Column('from_me', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('message_type', sa.String(length=32), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('push_name', sa.String(length=256), nullable=True),
    sa.Column('message_timestamp', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_pk'], ['instances.pk'], name=op.f('fk_messages_instance_pk_instances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_messages')),
    sa.UniqueConstraint('instance_pk', 'from_me', 'key_id', name=op.f('uq_messages_instance_pk_from_me_key_id'))
    )


def downgrade():
    op.drop_table('messages')
    op.drop_table('instances')
