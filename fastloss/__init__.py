"""fastloss: loss functions whose forward and backward passes run in C kernels
with OpenMP, behind a NumPy API.  See README.md and DESIGN.md."""

__version__ = "0.1.0"

from fastloss import reference
from fastloss._config import get_num_threads, set_num_threads, show_config
from fastloss.cross_entropy import (
    cross_entropy,
    cross_entropy_grad,
    cross_entropy_value_and_grad,
)

__all__ = [
    "__version__",
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_value_and_grad",
    "get_num_threads",
    "reference",
    "set_num_threads",
    "show_config",
]
