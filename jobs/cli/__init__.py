"""The command line: every ``llava-batch`` command that needs no model, their option types,
the commands generated for each job kind, rendering, progress, run output and the one error
boundary. The domain (the rest of ``jobs``) never imports this package; ``workers.cli`` composes
it with the commands that need a model.
"""
