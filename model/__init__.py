"""The vision-language model: loading a LLaVA-family checkpoint, batched generation, images.

Importing this package (and ``model.engine``, ``model.errors``, ``model.images``, ``model.fake``,
``model.schema``, ``model.documents``) never imports torch or transformers, so the CLI stays
fast. The real engine lives in
``model.transformers_engine`` and the offline tiny checkpoints in ``model.tiny``; import those
only where the model actually runs (the worker).

This ``__init__`` imports nothing: import the module you need. The CLI reads a bound of
``model.schema_refs`` while building its commands, and that need not load the engine's types.
"""
