"""Alembic environment of the experiment database (run through sxlab.experiment.db.upgrade).

Alembic runs this file with ``context.config`` set; imported any other way it does
nothing.
"""

from alembic import context

from sxlab.experiment.schema import metadata


def run_migrations(config) -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the experiment migrations through sxlab.experiment.db.upgrade "
                           "(or pass a connection in config.attributes['connection'])")
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


try:
    _config = context.config
except AttributeError:  # imported outside an Alembic run
    _config = None
if _config is not None:
    run_migrations(_config)
