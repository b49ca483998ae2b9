"""Alembic environment of the experiment database (run through sxlab.experiment.db.upgrade)."""

from alembic import context

from sxlab.experiment.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the experiment migrations through sxlab.experiment.db.upgrade "
                       "(or pass a connection in config.attributes['connection'])")
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite",
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
