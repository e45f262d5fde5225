"""Job kinds: one module each, registered in ``jobs.kinds.registry`` (``KINDS``).

A kind is typed parameters (a pydantic model, validated at submit and decoded once at claim)
and one handler (``jobs.kinds.base.Kind``): check the request, say what each item asks, turn an
item into generation requests (conversations), and turn generations into the item's outcome.
Nothing outside a kind's module branches on the kind.

Adding a kind is its module (parameters and handler), one line in ``KINDS``, the options its
commands take, declared once in ``jobs.kinds.commands`` (``jobs.kinds.options``), its error
codes (``jobs.errors``) and its page under ``docs/kinds/``. ``submit <kind>``, ``run <kind>`` and
``schedule add <kind>`` are generated from ``COMMANDS`` (``jobs.cli.kind_commands``).

This package's ``__init__`` imports nothing: the command line reads ``jobs.kinds.commands``
without loading the kinds (their pydantic parameters, the model code they use).
"""
