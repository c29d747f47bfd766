"""Apply the schema's migrations: `python -m shared.migrate`."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config

from shared.config import REPO_ROOT, get_settings
from shared.logs import configure_logging

log = logging.getLogger(__name__)


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` up to `revision`."""
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, revision)


def main() -> int:
    """Entry point: migrate the configured database."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    upgrade(settings.database_url)
    log.info("database schema is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
