"""The float64 NumPy reference for every fastloss loss, public as ``fastloss.reference``.

This package is the oracle the C kernels are tested against and the baseline the
benchmarks compare with. Each loss is plain, vectorised NumPy evaluated in float64,
written to be read next to its docstring formula rather than to be fast, and it shares
no code with the kernels or the public API. The functions have the public signatures
minus the performance options (``num_threads``, ``out=``, ``lse=``) and always return
float64: a Python float for ``reduction="mean"`` / ``"sum"``, an array for ``"none"``.

Validation is light: enough that a bad argument raises instead of giving a silently
wrong number. Complete, friendly error messages are the public API's job.

One module per family (``_cross_entropy``, ``_elementwise``, ``_contrastive``, ``_box``,
``_vocab``, ``_linear_cross_entropy``, ``_linear_token_log_probs``, ``_preference``);
each module's public functions (its ``__all__``) are exported here, and
``fastloss.reference.NAME`` is how to call it.
"""

from fastloss.reference import _box, _contrastive, _cross_entropy, _elementwise, _vocab
from fastloss.reference import _linear_cross_entropy, _linear_token_log_probs, _preference
from fastloss.reference._box import *  # noqa: F401,F403
from fastloss.reference._contrastive import *  # noqa: F401,F403
from fastloss.reference._contrastive import _normalize  # noqa: F401 (F.normalize's rows, for tests)
from fastloss.reference._cross_entropy import *  # noqa: F401,F403
from fastloss.reference._elementwise import *  # noqa: F401,F403
from fastloss.reference._vocab import *  # noqa: F401,F403
from fastloss.reference._linear_cross_entropy import *  # noqa: F401,F403
from fastloss.reference._linear_token_log_probs import *  # noqa: F401,F403
from fastloss.reference._preference import *  # noqa: F401,F403

__all__ = [*_cross_entropy.__all__, *_elementwise.__all__, *_contrastive.__all__,
           *_box.__all__, *_vocab.__all__, *_linear_cross_entropy.__all__,
           *_linear_token_log_probs.__all__, *_preference.__all__]
