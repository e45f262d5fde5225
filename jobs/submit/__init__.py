"""Submitting a job: the request (``request``), its inputs expanded and checked (``sources``, with
OpenAI-Batch lines read by ``openai_reader``), stored content-addressed (``input_store``), the
idempotency fingerprint (``fingerprint``), the job and item rows (``rows``), and the one
transaction-then-publish path (``job.submit_job``).

Import the module you need: this package's ``__init__`` stays empty so that the CLI's light
commands (``--help``, ``status``) can name ``BatchFormat`` without loading the rest.
"""
