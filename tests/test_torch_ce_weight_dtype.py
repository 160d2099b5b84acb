"""fastloss.torch.cross_entropy with probability targets and a class weight whose dtype
differs from the input's: torch (2.13) computes ``-(log_softmax(input) * target * weight)``
and so returns the loss in the promotion of the input's, the target's and the weight's
dtypes (a float64 weight beside float32 logits: a float64 loss), and takes a float16 or
bfloat16 weight beside float32 or float64 logits; the adapter returned the input's dtype
and refused half weights."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import fastloss.torch as FL  # noqa: E402

FLOATS = (torch.float32, torch.float64)
HALVES = (torch.float16, torch.bfloat16)
# (input, target, weight) as torch takes them, where the weight's dtype is not the input's
CASES = [(i, t, w) for i in FLOATS for t in FLOATS for w in FLOATS + HALVES if w != i]
CASES += [(i, t, w) for i in HALVES for t in (i, torch.float32) for w in FLOATS + HALVES
          if w != i]

TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-12}  # the contract's rtol


def _name(dtype):
    return str(dtype).replace("torch.", "")


@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
@pytest.mark.parametrize("input_dtype, target_dtype, weight_dtype", CASES,
                         ids=lambda d: _name(d))
def test_soft_target_weight_dtype_as_torch(input_dtype, target_dtype, weight_dtype,
                                           reduction):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    probs = torch.softmax(torch.randn(6, 5, generator=generator, dtype=torch.float64), 1)
    weight = torch.rand(5, generator=generator, dtype=torch.float64) + 0.5
    logits, probs, weight = (logits.to(input_dtype), probs.to(target_dtype),
                             weight.to(weight_dtype))
    results = []
    for function in (F.cross_entropy, FL.cross_entropy):
        x = logits.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        loss = function(x, probs, weight=w, reduction=reduction, label_smoothing=0.1)
        loss.sum().backward()
        results.append((loss, x.grad, w.grad))
    (loss_t, grad_t, wgrad_t), (loss, grad, wgrad) = results
    assert loss.dtype == loss_t.dtype, (loss.dtype, loss_t.dtype)
    assert grad.dtype == grad_t.dtype == input_dtype
    assert wgrad.dtype == wgrad_t.dtype == weight_dtype
    assert loss.shape == loss_t.shape
    if input_dtype in FLOATS and target_dtype in FLOATS:
        # against torch in float64 on the same numbers, to the contract of the
        # computation's dtype (the input's and the target's promotion)
        expected = F.cross_entropy(logits.double(), probs.double(), weight=weight.double(),
                                   reduction=reduction, label_smoothing=0.1)
        rtol = TOLERANCE[torch.promote_types(input_dtype, target_dtype)]
        error = (loss.double() - expected).abs()
        assert bool((error <= rtol * expected.abs()).all()), error.max()
