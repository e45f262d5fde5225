"""The domain and the database: jobs, items, their states, submit/status/results, settings, CLI.

Nothing here imports torch: the CLI must start fast.
"""
