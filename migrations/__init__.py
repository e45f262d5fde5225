"""Alembic migrations on ``jobs.db`` metadata; run with ``llava-batch db upgrade``."""
