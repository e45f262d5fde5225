"""The vision-language model: loading a LLaVA-family checkpoint, batched generation, images.

Importing this package (and ``model.engine``, ``model.errors``, ``model.images``, ``model.fake``,
``model.schema``, ``model.documents``) never imports torch or transformers, so the CLI stays
fast. The real engine lives in
``model.transformers_engine`` and the offline tiny checkpoints in ``model.tiny``; import those
only where the model actually runs (the worker).
"""

from model.engine import (
    TINY_MODELS,
    Engine,
    EngineSpec,
    GenerationRequest,
    GenerationResult,
)
from model.errors import (
    DeviceOutOfMemoryError,
    InputError,
    ModelError,
    ModelLoadError,
    SchemaError,
)

__all__ = [
    "TINY_MODELS",
    "DeviceOutOfMemoryError",
    "Engine",
    "EngineSpec",
    "GenerationRequest",
    "GenerationResult",
    "InputError",
    "ModelError",
    "ModelLoadError",
    "SchemaError",
]
