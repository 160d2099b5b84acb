"""The float64 NumPy reference for every fastloss loss, public as ``fastloss.reference``.

This package is the oracle the C kernels are tested against and the baseline the
benchmarks compare with. Each loss is plain, vectorised NumPy evaluated in float64,
written to be read next to its docstring formula rather than to be fast, and it shares
no code with the kernels or the public API. The functions have the public signatures
minus the performance options (``num_threads``, ``out=``, ``lse=``) and always return
float64: a Python float for ``reduction="mean"`` / ``"sum"``, an array for ``"none"``.

Validation is light: enough that a bad argument raises instead of giving a silently
wrong number. Complete, friendly error messages are the public API's job.

One module per family (``_cross_entropy``, ``_elementwise``, ``_contrastive``, ``_box``); each
public function is imported here, and ``fastloss.reference.NAME`` is how to call it.
"""

from fastloss.reference._box import (
    ciou_loss,
    ciou_loss_grad,
    ciou_loss_value_and_grad,
    diou_loss,
    diou_loss_grad,
    diou_loss_value_and_grad,
    giou_loss,
    giou_loss_grad,
    giou_loss_value_and_grad,
)
from fastloss.reference._contrastive import (  # _normalize: F.normalize's rows, for tests
    _normalize,  # noqa: F401
    contrastive,
    contrastive_grad,
    contrastive_pairwise,
    contrastive_pairwise_grad,
    contrastive_pairwise_value_and_grad,
    contrastive_value_and_grad,
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
from fastloss.reference._cross_entropy import (
    cross_entropy,
    cross_entropy_grad,
    cross_entropy_value_and_grad,
)
from fastloss.reference._elementwise import (
    bce_with_logits,
    bce_with_logits_grad,
    bce_with_logits_value_and_grad,
    gaussian_nll,
    gaussian_nll_grad,
    gaussian_nll_value_and_grad,
    huber,
    huber_grad,
    huber_value_and_grad,
    l1,
    l1_grad,
    l1_value_and_grad,
    margin_ranking,
    margin_ranking_grad,
    margin_ranking_value_and_grad,
    mse,
    mse_grad,
    mse_value_and_grad,
    pinball,
    pinball_grad,
    pinball_value_and_grad,
    poisson_nll,
    poisson_nll_grad,
    poisson_nll_value_and_grad,
    sigmoid_focal,
    sigmoid_focal_grad,
    sigmoid_focal_value_and_grad,
    smooth_l1,
    smooth_l1_grad,
    smooth_l1_value_and_grad,
)

__all__ = [
    "cross_entropy", "cross_entropy_grad", "cross_entropy_value_and_grad",
    "mse", "mse_grad", "mse_value_and_grad",
    "l1", "l1_grad", "l1_value_and_grad",
    "huber", "huber_grad", "huber_value_and_grad",
    "smooth_l1", "smooth_l1_grad", "smooth_l1_value_and_grad",
    "bce_with_logits", "bce_with_logits_grad", "bce_with_logits_value_and_grad",
    "sigmoid_focal", "sigmoid_focal_grad", "sigmoid_focal_value_and_grad",
    "margin_ranking", "margin_ranking_grad", "margin_ranking_value_and_grad",
    "poisson_nll", "poisson_nll_grad", "poisson_nll_value_and_grad",
    "gaussian_nll", "gaussian_nll_grad", "gaussian_nll_value_and_grad",
    "pinball", "pinball_grad", "pinball_value_and_grad",
    "pairwise_distance", "pairwise_distance_grad", "pairwise_distance_value_and_grad",
    "contrastive", "contrastive_grad", "contrastive_value_and_grad",
    "contrastive_pairwise", "contrastive_pairwise_grad", "contrastive_pairwise_value_and_grad",
    "info_nce", "info_nce_grad", "info_nce_value_and_grad",
    "triplet_margin", "triplet_margin_grad", "triplet_margin_value_and_grad",
    "giou_loss", "giou_loss_grad", "giou_loss_value_and_grad",
    "diou_loss", "diou_loss_grad", "diou_loss_value_and_grad",
    "ciou_loss", "ciou_loss_grad", "ciou_loss_value_and_grad",
]
