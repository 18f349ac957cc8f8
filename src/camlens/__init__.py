"""camlens: see where an image classifier looks."""

from camlens.adapters.pytorch import CAM, CamResult, Explainer, GradCAM, GradCAMPlusPlus
from camlens.errors import CamlensError

__all__ = ["CAM", "CamResult", "CamlensError", "Explainer", "GradCAM", "GradCAMPlusPlus"]
__version__ = "0.1.0"
