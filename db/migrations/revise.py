"""Write a new migration from the difference between the models and a fresh database.

    .venv/bin/python -m db.migrations.revise "add a column"
"""

import sys
import tempfile
from pathlib import Path

from alembic import command

from db.engine import make_engine
from db.migrate import alembic_config, upgrade_schema


def main() -> None:
    message = " ".join(sys.argv[1:]) or "schema change"
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'revise.db'}")
        upgrade_schema(engine)
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.revision(config, message=message, autogenerate=True)
        engine.dispose()


if __name__ == "__main__":
    main()
