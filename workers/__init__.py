"""Celery app, thin tasks, per-process resources (the resident model), sweeper and local runner."""
