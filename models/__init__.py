"""Model registry: name → module holding a ``Model(configs)`` class (imported lazily)."""

MODEL_REGISTRY: dict[str, str] = {
    "iTransformer": "models.iTransformer",
    "iTransformerDiffusion": "models.iTransformerDiffusion",
    "iTransformerDiffusionDirect": "models.iTransformerDiffusionDirect",
}
