"""fastloss: loss functions whose forward and backward passes run in C kernels
with OpenMP, behind a NumPy API.  See README.md and DESIGN.md."""

__version__ = "0.1.0"

import os as _os

# libgomp's threads spin for about a millisecond (GOMP_SPINCOUNT 300000) after each of
# the kernels' parallel regions before they sleep, and a BLAS product that follows
# (contrastive_pairwise's, info_nce's) shares the cores with them meanwhile.  A short
# spin costs the kernels nothing measurable and takes a quarter off contrastive_pairwise
# at N = 1024.  Only a default, set before the extension loads libgomp, and never over
# the process's own OMP_WAIT_POLICY or GOMP_SPINCOUNT.
if "GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"

from fastloss import reference
from fastloss._config import get_num_threads, set_num_threads, show_config
from fastloss._kernels import release_memory
from fastloss.cross_entropy import (
    cross_entropy,
    cross_entropy_grad,
    cross_entropy_value_and_grad,
)
from fastloss.elementwise import (
    bce_with_logits,
    bce_with_logits_grad,
    bce_with_logits_value_and_grad,
    huber,
    huber_grad,
    huber_value_and_grad,
    l1,
    l1_grad,
    l1_value_and_grad,
    mse,
    mse_grad,
    mse_value_and_grad,
    smooth_l1,
    smooth_l1_grad,
    smooth_l1_value_and_grad,
)

from fastloss.contrastive import (
    contrastive,
    contrastive_grad,
    contrastive_value_and_grad,
    contrastive_pairwise,
    contrastive_pairwise_grad,
    contrastive_pairwise_value_and_grad,
    info_nce,
    info_nce_grad,
    info_nce_value_and_grad,
    pairwise_distance,
    pairwise_distance_grad,
    pairwise_distance_value_and_grad,
    triplet_margin,
    triplet_margin_grad,
    triplet_margin_value_and_grad,
)

__all__ = [
    "__version__",
    "bce_with_logits",
    "bce_with_logits_grad",
    "bce_with_logits_value_and_grad",
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_value_and_grad",
    "get_num_threads",
    "huber",
    "huber_grad",
    "huber_value_and_grad",
    "l1",
    "l1_grad",
    "l1_value_and_grad",
    "mse",
    "mse_grad",
    "mse_value_and_grad",
    "reference",
    "release_memory",
    "set_num_threads",
    "show_config",
    "smooth_l1",
    "smooth_l1_grad",
    "smooth_l1_value_and_grad",
    "contrastive",
    "contrastive_grad",
    "contrastive_value_and_grad",
    "contrastive_pairwise",
    "contrastive_pairwise_grad",
    "contrastive_pairwise_value_and_grad",
    "info_nce",
    "info_nce_grad",
    "info_nce_value_and_grad",
    "pairwise_distance",
    "pairwise_distance_grad",
    "pairwise_distance_value_and_grad",
    "triplet_margin",
    "triplet_margin_grad",
    "triplet_margin_value_and_grad",
]
