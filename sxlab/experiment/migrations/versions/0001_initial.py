"""Initial schema: experiments, runs, tags, trials, blocks, jobs, results

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('experiments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tag', sa.String(length=100), nullable=False),
    sa.Column('root', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('comment', sa.Text(), server_default='', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiments')),
    sa.UniqueConstraint('tag', name=op.f('uq_experiments_tag'))
    )
    op.create_table('blocks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('first_run', sa.Integer(), nullable=False),
    sa.Column('last_run', sa.Integer(), nullable=True),
    sa.Column('geometry', sa.Text(), nullable=True),
    sa.Column('mask', sa.Text(), nullable=True),
    sa.Column('params_toml', sa.Text(), server_default='', nullable=False),
    sa.Column('comment', sa.Text(), server_default='', nullable=False),
    sa.Column('active', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_blocks_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocks')),
    sa.UniqueConstraint('experiment_id', 'number', name='uq_blocks_experiment_number')
    )
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('number', sa.Integer(), nullable=True),
    sa.Column('path', sa.Text(), server_default='', nullable=False),
    sa.Column('source', sa.String(length=20), server_default='watch', nullable=False),
    sa.Column('status', sa.String(length=20), server_default='acquiring', nullable=False),
    sa.Column('discovered_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('n_frames', sa.Integer(), nullable=True),
    sa.Column('signature', sa.Text(), server_default='', nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_runs_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs')),
    sa.UniqueConstraint('experiment_id', 'name', name='uq_runs_experiment_name')
    )
    op.create_table('tags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('comment', sa.Text(), server_default='', nullable=False),
    sa.Column('persistent', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_tags_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tags')),
    sa.UniqueConstraint('experiment_id', 'name', name='uq_tags_experiment_name')
    )
    op.create_table('trials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('params_toml', sa.Text(), nullable=False),
    sa.Column('params_hash', sa.String(length=16), nullable=False),
    sa.Column('comment', sa.Text(), server_default='', nullable=False),
    sa.Column('d_min_A', sa.Float(), nullable=True),
    sa.Column('active', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_trials_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trials')),
    sa.UniqueConstraint('experiment_id', 'number', name='uq_trials_experiment_number')
    )
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('block_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), server_default='queued', nullable=False),
    sa.Column('executor', sa.String(length=100), server_default='', nullable=False),
    sa.Column('external_id', sa.String(length=200), server_default='', nullable=False),
    sa.Column('job_dir', sa.Text(), nullable=False),
    sa.Column('command', sa.Text(), nullable=False),
    sa.Column('params_toml', sa.Text(), nullable=False),
    sa.Column('params_hash', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), server_default='', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ingested_frames', sa.Integer(), server_default='0', nullable=False),
    sa.Column('ingest_done', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.ForeignKeyConstraint(['block_id'], ['blocks.id'], name=op.f('fk_jobs_block_id_blocks'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_jobs_run_id_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['trial_id'], ['trials.id'], name=op.f('fk_jobs_trial_id_trials'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('trial_id', 'block_id', 'run_id', name='uq_jobs_trial_block_run')
    )
    op.create_table('merges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('selection', sa.Text(), nullable=False),
    sa.Column('symmetry', sa.String(length=40), nullable=False),
    sa.Column('out_dir', sa.Text(), nullable=False),
    sa.Column('n_crystals', sa.Integer(), nullable=False),
    sa.Column('n_reflections', sa.Integer(), nullable=False),
    sa.Column('n_unique', sa.Integer(), nullable=False),
    sa.Column('cc_half', sa.Float(), nullable=True),
    sa.Column('d_cc_star_A', sa.Float(), nullable=True),
    sa.Column('stats_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['trial_id'], ['trials.id'], name=op.f('fk_merges_trial_id_trials'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_merges'))
    )
    op.create_table('run_tags',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('tag_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_tags_run_id_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tag_id'], ['tags.id'], name=op.f('fk_run_tags_tag_id_tags'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'tag_id', name=op.f('pk_run_tags'))
    )
    op.create_table('crystals',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('frame', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('crystal', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('a', sa.Float(), nullable=True),
    sa.Column('b', sa.Float(), nullable=True),
    sa.Column('c', sa.Float(), nullable=True),
    sa.Column('alpha', sa.Float(), nullable=True),
    sa.Column('beta', sa.Float(), nullable=True),
    sa.Column('gamma', sa.Float(), nullable=True),
    sa.Column('lattice', sa.String(length=20), server_default='', nullable=False),
    sa.Column('centering', sa.String(length=2), server_default='', nullable=False),
    sa.Column('n_peaks_indexed', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_crystals_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'frame', 'crystal', name=op.f('pk_crystals'))
    )
    with op.batch_alter_table('crystals', schema=None) as batch_op:
        batch_op.create_index('ix_crystals_trial_run', ['trial_id', 'run_id'], unique=False)

    op.create_table('frames',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('frame', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('event', sa.String(length=100), server_default='', nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('error', sa.Text(), server_default='', nullable=False),
    sa.Column('n_peaks', sa.Integer(), nullable=False),
    sa.Column('hit', sa.Boolean(), nullable=False),
    sa.Column('indexed', sa.Boolean(), nullable=False),
    sa.Column('n_crystals', sa.Integer(), nullable=False),
    sa.Column('n_reflections', sa.Integer(), nullable=False),
    sa.Column('resolution_A', sa.Float(), nullable=True),
    sa.Column('solvent_ratio', sa.Float(), nullable=True),
    sa.Column('total_s', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_frames_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'frame', name=op.f('pk_frames'))
    )
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.create_index('ix_frames_trial_run_frame', ['trial_id', 'run_id', 'frame'], unique=False)

    op.create_table('parts',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('first_frame', sa.Integer(), nullable=False),
    sa.Column('n_frames', sa.Integer(), nullable=False),
    sa.Column('ingested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stats', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_parts_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'name', name=op.f('pk_parts'))
    )
    with op.batch_alter_table('parts', schema=None) as batch_op:
        batch_op.create_index('ix_parts_trial_run', ['trial_id', 'run_id'], unique=False)

    op.create_table('shells',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('frame', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('shell', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('d_max_A', sa.Float(), nullable=False),
    sa.Column('d_min_A', sa.Float(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('mean_i_sigma', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_shells_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'frame', 'shell', name=op.f('pk_shells'))
    )
    with op.batch_alter_table('shells', schema=None) as batch_op:
        batch_op.create_index('ix_shells_trial_run', ['trial_id', 'run_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('shells', schema=None) as batch_op:
        batch_op.drop_index('ix_shells_trial_run')

    op.drop_table('shells')
    with op.batch_alter_table('parts', schema=None) as batch_op:
        batch_op.drop_index('ix_parts_trial_run')

    op.drop_table('parts')
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.drop_index('ix_frames_trial_run_frame')

    op.drop_table('frames')
    with op.batch_alter_table('crystals', schema=None) as batch_op:
        batch_op.drop_index('ix_crystals_trial_run')

    op.drop_table('crystals')
    op.drop_table('run_tags')
    op.drop_table('merges')
    op.drop_table('jobs')
    op.drop_table('trials')
    op.drop_table('tags')
    op.drop_table('runs')
    op.drop_table('blocks')
    op.drop_table('experiments')
