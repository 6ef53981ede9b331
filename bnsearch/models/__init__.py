"""Model families; BN placement is data (a :class:`Norm`) passed into every builder."""

from bnsearch.models.blocks import Norm
from bnsearch.models.registry import create_model, list_models, model_parameters, register_model
from bnsearch.models import convnet, mlp, mobilenet_v2  # noqa: F401  (registers the families)

__all__ = ["Norm", "create_model", "list_models", "model_parameters", "register_model"]
