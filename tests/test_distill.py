"""Fused distillation (csrc/vocab.c): distill_kl (forward and reverse KL) and jsd (the
generalised Jensen-Shannon divergence) from a student's and a teacher's logits, against
the float64 reference, finite differences, torch's unfused formulas (F.kl_div over
log_softmax, TRL's generalised JSD written out), and the family's edge cases."""
import numpy as np
import pytest

import fastloss
from fastloss import reference
from loss_specs import assert_close_contract, call_unmodified, central_differences
from simd_paths import simd_paths

DTYPES = [np.float32, np.float64]
IDS = ["float32", "float64"]
BOTH = ("student_logits", "teacher_logits")
DIVERGENCES = [
    pytest.param("distill_kl", {"direction": "forward"}, id="forward"),
    pytest.param("distill_kl", {"direction": "reverse"}, id="reverse"),
    pytest.param("jsd", {"beta": 0.5}, id="jsd-0.5"),
    pytest.param("jsd", {"beta": 0.1}, id="jsd-0.1"),
    pytest.param("jsd", {"beta": 0.9}, id="jsd-0.9"),
]


def _pair(rng, shape, dtype, scale=2.5):
    student = (rng.standard_normal(shape) * scale).astype(dtype)
    teacher = (rng.standard_normal(shape) * scale + 0.5 * student).astype(dtype)
    return student, teacher


def _labels(rng, shape):
    labels = rng.integers(0, 50, shape[:-1])
    labels.reshape(-1)[::4] = -100
    return labels


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, options", DIVERGENCES)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_loss_and_gradients_match_the_reference(rng, dtype, name, options, reduction,
                                                temperature):
    shape = (3, 5, 2600)
    student, teacher = _pair(rng, shape, dtype)
    target = _labels(rng, shape)
    kw = dict(options, temperature=temperature, target=target, reduction=reduction)
    upstream = 0.75 if reduction != "none" else rng.standard_normal(shape[:-1])
    loss = call_unmodified(getattr(fastloss, name), student, teacher, **kw)
    expected = getattr(reference, name)(student, teacher, **kw)
    if reduction == "none":
        assert loss.dtype == dtype and loss.shape == shape[:-1]
    else:
        assert type(loss) is float
    assert_close_contract(loss, expected, dtype, "loss")
    grads = call_unmodified(getattr(fastloss, name + "_grad"), student, teacher, upstream,
                            wrt=BOTH, **kw)
    expected_grads = getattr(reference, name + "_grad")(student, teacher, upstream, wrt=BOTH,
                                                        **kw)
    for grad, ref, what in zip(grads, expected_grads, BOTH):
        assert grad.dtype == dtype and grad.shape == shape
        assert_close_contract(grad, ref, dtype, "grad", what)
        assert np.all(grad[0, 0] == 0)  # an ignored row
    fused_loss, fused = getattr(fastloss, name + "_value_and_grad")(
        student, teacher, upstream, wrt=BOTH, **kw)
    assert np.array_equal(fused_loss, loss)
    assert all(np.array_equal(a, b) for a, b in zip(fused, grads))
    student_only = getattr(fastloss, name + "_grad")(student, teacher, upstream, **kw)
    assert np.array_equal(student_only, grads[0])
    teacher_only = getattr(fastloss, name + "_grad")(student, teacher, upstream,
                                                     wrt="teacher_logits", **kw)
    assert np.array_equal(teacher_only, grads[1])


@pytest.mark.parametrize("name, options", DIVERGENCES)
def test_gradients_pass_finite_differences(rng, name, options):
    student, teacher = _pair(rng, (3, 6), np.float64, scale=1.2)
    kw = dict(options, temperature=1.3, reduction="sum")
    grads = getattr(fastloss, name + "_grad")(student, teacher, 0.6, wrt=BOTH, **kw)
    loss = getattr(reference, name)
    numeric_student = central_differences(lambda x: 0.6 * loss(x, teacher, **kw), student, 1e-3)
    numeric_teacher = central_differences(lambda x: 0.6 * loss(student, x, **kw), teacher, 1e-3)
    np.testing.assert_allclose(grads[0], numeric_student, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(grads[1], numeric_teacher, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("name, options", DIVERGENCES)
def test_gradients_pass_finite_differences_at_a_close_pair(rng, name, options):
    """As above for a teacher 0.02 from the student (plus a constant), where the terms of
    the divergence are of the order of 4e-4 and its gradient of 0.02: central differences
    of the reference's loss with step 1e-4 (truncation about 1e-8 * 0.02 / 6)."""
    student = rng.standard_normal((3, 7)) * 1.5
    teacher = student + 0.02 * rng.standard_normal(student.shape) + 0.3
    kw = dict(options, temperature=0.8, reduction="sum")
    grads = getattr(fastloss, name + "_grad")(student, teacher, 1.0, wrt=BOTH, **kw)
    loss = getattr(reference, name)
    numeric_student = central_differences(lambda x: loss(x, teacher, **kw), student, 1e-4)
    numeric_teacher = central_differences(lambda x: loss(student, x, **kw), teacher, 1e-4)
    for grad, numeric in ((grads[0], numeric_student), (grads[1], numeric_teacher)):
        scale = np.max(np.abs(numeric))
        assert scale > 1e-4  # a gradient of the order of the distance (times 1 - beta)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8 * scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_beta_zero_and_one_are_the_two_kls(rng, dtype):
    """Liger-Kernel's and TRL's convention: jsd(beta=0) is KL(teacher || student), jsd(beta=1)
    is KL(student || teacher)."""
    student, teacher = _pair(rng, (4, 300), dtype)
    for beta, direction in ((0.0, "forward"), (1.0, "reverse")):
        loss, grads = fastloss.jsd_value_and_grad(student, teacher, beta=beta, wrt=BOTH)
        kl_loss, kl_grads = fastloss.distill_kl_value_and_grad(student, teacher,
                                                               direction=direction, wrt=BOTH)
        assert loss == kl_loss and all(np.array_equal(a, b) for a, b in zip(grads, kl_grads))
    forward = reference.distill_kl(student, teacher)
    manual = np.mean(np.sum(np.exp(_log_softmax(teacher)) *
                            (_log_softmax(teacher) - _log_softmax(student)), axis=-1))
    assert_close_contract(forward, manual, np.float64, "loss")


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, options", DIVERGENCES)
def test_identical_models_give_zero(rng, dtype, name, options):
    """Every y = log q - log p is exactly 0 (the logits' difference, and the row's
    constant from sums of expm1(0) = 0), so every term and gradient is exactly 0."""
    student, _ = _pair(rng, (5, 700), dtype)
    loss, grads = getattr(fastloss, name + "_value_and_grad")(student, student.copy(),
                                                              wrt=BOTH, **options)
    assert loss == 0.0
    assert all(np.all(grad == 0.0) for grad in grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, options", DIVERGENCES)
def test_huge_logits(rng, dtype, name, options):
    student = (rng.choice([-1e4, 1e4], (4, 1200)) + rng.standard_normal((4, 1200))).astype(dtype)
    teacher = (rng.choice([-1e4, 1e4], (4, 1200)) + rng.standard_normal((4, 1200))).astype(dtype)
    for temperature in (1.0, 1.0e3):
        kw = dict(options, temperature=temperature, reduction="none")
        loss, grads = getattr(fastloss, name + "_value_and_grad")(student, teacher, 1.0,
                                                                  wrt=BOTH, **kw)
        ref_loss, ref_grads = getattr(reference, name + "_value_and_grad")(
            student, teacher, 1.0, wrt=BOTH, **kw)
        assert np.all(np.isfinite(loss))
        assert_close_contract(loss, ref_loss, dtype, "loss")
        for grad, ref in zip(grads, ref_grads):
            assert_close_contract(grad, ref, dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, options", DIVERGENCES)
def test_masked_classes(dtype, name, options):
    """-inf logits (classes a model rules out): 0 log 0 = 0 where a probability is 0, and
    KL = inf where the other model gives the class mass, as F.kl_div."""
    student = np.array([[0.5, -np.inf, 2.0, 1.0], [0.1, 0.2, -np.inf, 0.4],
                        [1.0, -np.inf, 0.0, 2.0]], dtype)
    teacher = np.array([[1.0, -np.inf, 0.0, 0.3], [0.3, 0.1, 0.5, 0.2],
                        [2.0, 1.0, -np.inf, 0.0]], dtype)
    kw = dict(options, reduction="none")
    loss = getattr(fastloss, name)(student, teacher, **kw)
    ref = getattr(reference, name)(student, teacher, **kw)
    assert_close_contract(loss, ref, dtype, "loss")
    assert np.isfinite(loss[0])
    grads = getattr(fastloss, name + "_grad")(student[:1], teacher[:1], 1.0, wrt=BOTH, **kw)
    ref_grads = getattr(reference, name + "_grad")(student[:1], teacher[:1], 1.0, wrt=BOTH,
                                                   **kw)
    for grad, expected in zip(grads, ref_grads):
        assert grad[0, 1] == 0
        assert_close_contract(grad, expected, dtype, "grad")


def test_rows_without_a_distribution_are_nan():
    student = np.array([[0.0, np.nan], [np.inf, 0.0], [-np.inf, -np.inf], [0.0, 1.0]])
    teacher = np.zeros((4, 2))
    loss, grad = fastloss.distill_kl_value_and_grad(student, teacher, np.ones(4),
                                                    reduction="none")
    assert np.all(np.isnan(loss[:3])) and np.isfinite(loss[3])
    assert np.all(np.isnan(grad[:3])) and np.all(np.isfinite(grad[3]))


@pytest.mark.parametrize("name, options", DIVERGENCES)
def test_ignored_rows_and_one_class(rng, name, options):
    student, teacher = _pair(rng, (4, 10), np.float64)
    every = np.full(4, -100)
    assert np.isnan(getattr(fastloss, name)(student, teacher, target=every, **options))
    assert getattr(fastloss, name)(student, teacher, target=every, reduction="sum",
                                   **options) == 0.0
    assert np.all(getattr(fastloss, name + "_grad")(student, teacher, target=every,
                                                    reduction="sum", **options) == 0)
    labels = np.array([3, -100, 5, -100])
    kept = getattr(fastloss, name)(student, teacher, target=labels, **options)
    assert_close_contract(kept, getattr(fastloss, name)(student[[0, 2]], teacher[[0, 2]],
                                                        **options), np.float64, "loss")
    # one class: both distributions are [1], a distribution against itself
    one = getattr(fastloss, name + "_value_and_grad")(student[:, :1], teacher[:, :1],
                                                      wrt=BOTH, **options)
    if name == "distill_kl":
        assert one[0] == 0.0 and all(np.all(grad == 0) for grad in one[1])
    else:  # log m = log p only up to the rounding of log1p(exp(-|delta|))
        assert abs(one[0]) < 1e-15 and all(np.max(np.abs(g)) < 1e-15 for g in one[1])


@pytest.mark.parametrize("name, options", DIVERGENCES)
def test_thread_count_does_not_change_a_bit(rng, name, options):
    student, teacher = _pair(rng, (29, 4500), np.float32)
    target = _labels(rng, (29, 4500))
    results = []
    for threads in (1, 2, 3, 7):
        loss, grads = getattr(fastloss, name + "_value_and_grad")(
            student, teacher, target=target, wrt=BOTH, num_threads=threads, **options)
        results.append((loss, grads[0].tobytes(), grads[1].tobytes()))
    assert all(result == results[0] for result in results)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_strided_and_fortran_inputs(rng, dtype):
    student, teacher = _pair(rng, (8, 1400), dtype)
    layouts = [(student[:, ::2], teacher[:, 1::2]), (np.asfortranarray(student), teacher),
               (student[::2], np.asfortranarray(teacher[::2]))]
    for s, t in layouts:
        loss, grads = fastloss.jsd_value_and_grad(s, t, beta=0.3, wrt=BOTH, temperature=1.5)
        ref_loss, ref_grads = reference.jsd_value_and_grad(s, t, beta=0.3, wrt=BOTH,
                                                           temperature=1.5)
        assert_close_contract(loss, ref_loss, dtype, "loss")
        for grad, ref in zip(grads, ref_grads):
            assert grad.shape == s.shape
            assert_close_contract(grad, ref, dtype, "grad")


def test_out_receives_the_gradients(rng):
    student, teacher = _pair(rng, (6, 500), np.float32)
    out = (np.empty_like(student), np.zeros((6, 1000), np.float32)[:, ::2])
    result = fastloss.distill_kl_grad(student, teacher, wrt=BOTH, out=out)
    assert result[0] is out[0] and result[1] is out[1]
    fresh = fastloss.distill_kl_grad(student, teacher, wrt=BOTH)
    assert np.array_equal(out[0], fresh[0]) and np.array_equal(out[1], fresh[1])
    single = np.empty_like(student)
    assert fastloss.jsd_grad(student, teacher, out=single) is single
    assert np.array_equal(single, fastloss.jsd_grad(student, teacher))
    overlapping = student.copy()
    expected = fastloss.distill_kl_grad(overlapping, teacher)
    fastloss.distill_kl_grad(overlapping, teacher, out=overlapping)
    assert np.array_equal(overlapping, expected)


@pytest.mark.parametrize("call, message", [
    (lambda s, t: fastloss.distill_kl(s, t, temperature=0.0), "^temperature"),
    (lambda s, t: fastloss.jsd(s, t, temperature=-2.0), "^temperature"),
    (lambda s, t: fastloss.jsd_grad(s, t, temperature=np.nan), "^temperature"),
    (lambda s, t: fastloss.jsd(s, t, beta=1.5), "^beta"),
    (lambda s, t: fastloss.jsd(s, t, beta=-0.1), "^beta"),
    (lambda s, t: fastloss.jsd_value_and_grad(s, t, beta=np.nan), "^beta"),
    (lambda s, t: fastloss.distill_kl(s, t, direction="backward"), "^direction"),
    (lambda s, t: fastloss.distill_kl(s, t[:, :5]), "^teacher_logits"),
    (lambda s, t: fastloss.distill_kl(s, t[:2]), "^teacher_logits"),
    (lambda s, t: fastloss.distill_kl(s, t.astype(np.float32)), "^teacher_logits"),
    (lambda s, t: fastloss.distill_kl(s.astype(np.int64), t), "^student_logits"),
    (lambda s, t: fastloss.jsd(s.astype(np.complex64), t.astype(np.complex64)),
     "^student_logits"),  # (float16 and bfloat16 are taken: tests/test_half_families.py)
    (lambda s, t: fastloss.jsd(s, t, reduction="mean"), "^reduction"),
    (lambda s, t: fastloss.jsd(s, t, target=np.ones(3, np.int64)), "^target"),
    (lambda s, t: fastloss.jsd(s, t, target=np.ones(4)), "^target"),
    (lambda s, t: fastloss.jsd_grad(s, t, wrt="logits"), "^wrt"),
    (lambda s, t: fastloss.jsd_grad(s, t, np.ones(4)), "^grad_output"),
    (lambda s, t: fastloss.jsd_grad(s, t, np.ones(3), reduction="none"), "^grad_output"),
    (lambda s, t: fastloss.jsd_grad(s, t, out=np.empty((4, 9))), "^out"),
    (lambda s, t: fastloss.jsd_grad(s, t, wrt=BOTH, out=np.empty((4, 10))), "^out"),
    (lambda s, t: fastloss.jsd(s, t, ignore_index=1.5), "^ignore_index"),
])
def test_bad_input_names_the_argument(call, message):
    student = np.random.default_rng(3).standard_normal((4, 10))
    with pytest.raises((TypeError, ValueError), match=message):
        call(student, student * 0.5)


# ----------------------------------------------------------------------------------------
# torch's unfused formulas
# ----------------------------------------------------------------------------------------

def _torch_divergence(torch, student, teacher, name, options, temperature, labels):
    """The loss as TRL's GKD trainer and F.kl_div compute it: log_softmax of each model at
    temperature T, F.kl_div with log_target, the mixture by logsumexp, the batch mean
    over the labels that are not -100."""
    F = torch.nn.functional
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    beta = options.get("beta", 0.0 if options.get("direction") == "forward" else 1.0)
    if name == "distill_kl" and options["direction"] == "forward" or beta == 0.0:
        per_class = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    elif name == "distill_kl" or beta == 1.0:
        per_class = F.kl_div(log_p, log_q, reduction="none", log_target=True)
    else:
        beta_t = torch.tensor(beta, dtype=log_q.dtype)
        log_m = torch.logsumexp(torch.stack([log_q + torch.log(1 - beta_t),
                                             log_p + torch.log(beta_t)]), dim=0)
        per_class = (beta * F.kl_div(log_m, log_p, reduction="none", log_target=True)
                     + (1 - beta) * F.kl_div(log_m, log_q, reduction="none", log_target=True))
    mask = labels != -100
    return per_class.sum(-1)[mask].sum() / mask.sum()


@pytest.mark.parametrize("name, options", DIVERGENCES)
def test_torch_unfused_formulas(name, options):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    student, teacher = _pair(rng, (12, 3000), np.float32)
    labels = _labels(rng, (12, 3000))
    temperature = 1.5
    leaves = [torch.from_numpy(a.astype(np.float64)).requires_grad_(True)
              for a in (student, teacher)]
    theirs = _torch_divergence(torch, *leaves, name, options, temperature,
                               torch.from_numpy(labels))
    theirs.backward()
    loss, grads = getattr(fastloss, name + "_value_and_grad")(
        student, teacher, temperature=temperature, target=labels, wrt=BOTH, **options)
    assert_close_contract(loss, theirs.item(), np.float32, "loss")
    for grad, leaf in zip(grads, leaves):
        assert_close_contract(grad, leaf.grad.numpy(), np.float32, "grad")


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("name, options", DIVERGENCES)
def test_torch_adapter_and_module(name, options, reduction):
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    rng = np.random.default_rng(13)
    student, teacher = _pair(rng, (2, 4, 700), np.float64)
    labels = _labels(rng, (2, 4, 700))
    ours = [torch.from_numpy(a.copy()).requires_grad_(True) for a in (student, teacher)]
    theirs = [torch.from_numpy(a.copy()).requires_grad_(True) for a in (student, teacher)]
    kw = dict(options, temperature=1.3, reduction=reduction)
    loss = getattr(FL, name)(*ours, torch.from_numpy(labels), **kw)
    assert loss.dtype == torch.float64
    upstream = torch.from_numpy(rng.standard_normal(loss.shape)) if reduction == "none" \
        else torch.tensor(0.7, dtype=torch.float64)
    (loss * upstream).sum().backward()
    expected = getattr(reference, name)(student, teacher, target=labels, **kw)
    assert_close_contract(loss.detach().numpy(), expected, np.float64, "loss")
    grads = getattr(reference, name + "_grad")(student, teacher, upstream.numpy(), target=labels,
                                               wrt=BOTH, **kw)
    for leaf, ref in zip(ours, grads):
        assert_close_contract(leaf.grad.numpy(), ref, np.float64, "grad")
    module = {"distill_kl": FL.DistillKLLoss, "jsd": FL.JSDLoss}[name](**kw)
    frozen = module(theirs[0], theirs[1].detach(), torch.from_numpy(labels))
    assert torch.equal(frozen, loss.detach())
    (frozen * upstream).sum().backward()
    assert torch.equal(theirs[0].grad, ours[0].grad) and theirs[1].grad is None


def test_torch_second_backward_recomputes():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    student = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 20, dtype=torch.float64)
    loss = FL.jsd(student, teacher, beta=0.2)
    loss.backward(retain_graph=True)
    first = student.grad.clone()
    loss.backward()
    assert torch.allclose(student.grad, 2 * first, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, options", DIVERGENCES)
def test_every_simd_path(simd_path, rng, dtype, name, options):
    """Each SIMD path of the kernels (baseline, AVX2, AVX-512) against the reference:
    rows of several chunks with a short last one (2 x 2048 + 100 classes), masked
    classes, and a temperature, loss and both gradients."""
    shape = (3, 2 * 2048 + 100)
    student, teacher = _pair(rng, shape, dtype)
    student[0, 7] = teacher[0, 7] = -np.inf  # a class both models rule out
    teacher[1, 2050:2060] = -np.inf  # classes the teacher rules out
    kw = dict(options, temperature=0.8, reduction="none")
    value, grads = getattr(fastloss, name + "_value_and_grad")(student, teacher, 0.5,
                                                               wrt=BOTH, **kw)
    assert_close_contract(value, getattr(reference, name)(student, teacher, **kw), dtype,
                          "loss")
    expected = getattr(reference, name + "_grad")(student, teacher, 0.5, wrt=BOTH, **kw)
    for grad, ref in zip(grads, expected):
        assert grad[0, 7] == 0
        assert_close_contract(grad, ref, dtype, "grad")


EACH_GRADIENT = [("student_logits",), ("teacher_logits",), BOTH]
EVERY_DIVERGENCE = [
    ("distill_kl", {"direction": "forward"}), ("distill_kl", {"direction": "reverse"}),
    ("jsd", {"beta": 0.5}), ("jsd", {"beta": 0.0}), ("jsd", {"beta": 1.0}),
]


def _far_rows(rng, shape, dtype, distance):
    """Four rows (_far_pair): the student's three classes raised (its reference far into
    saturation), a close pair, the teacher's three raised, both models' (each its own
    three)."""
    student = rng.standard_normal(shape) * 3
    teacher = student + rng.standard_normal(shape) * 0.5
    for row, models in enumerate([(student,), (), (teacher,), (student, teacher)]):
        for model in models:
            model[row, rng.choice(shape[-1], 3, replace=False)] += distance
    return student.astype(dtype), teacher.astype(dtype)


def _gradient_set_cases():
    for dtype, dtype_id in zip(DTYPES, IDS):
        for n_classes in (15, 2047, 2049, 2 * 2048 + 37):
            yield pytest.param(dtype, n_classes, None, id=f"{dtype_id}-{n_classes}")
        for n_classes in (15, 2 * 2048 + 37):
            yield pytest.param(dtype, n_classes, 20.0, id=f"{dtype_id}-{n_classes}-far")


@pytest.mark.parametrize("dtype, n_classes, distance", _gradient_set_cases())
def test_each_set_of_gradients_on_every_simd_path(rng, dtype, n_classes, distance):
    """The kernel keeps each model's exps in that model's gradient row when one is asked
    (float32, float64) and in scratch otherwise, and the JSD's pass B keeps the gaps
    log q - log m (and log p - log m) for pass C: every set of gradients (student,
    teacher, both, none) on every SIMD path, against the reference and bitwise against
    each other; rows of a tail that is no multiple of the vector width, of a chunk and a
    bit, of two chunks and a tail (one class: test_ignored_rows_and_one_class); an
    ignored row; temperature 1 and 0.7; beta 0, 1 and 0.5; and rows far apart
    (_far_rows: the JSD's exact differences for one model or both)."""
    shape = (4, n_classes)
    if distance is None:
        student, teacher = _pair(rng, shape, dtype)
    else:
        student, teacher = _far_rows(rng, shape, dtype, distance)
    target = np.array([1, -100, 0, 2])
    upstream = np.array([0.5, 2.0, -1.5, 1.0])
    with simd_paths() as paths:
        for path in paths:
            for name, options in EVERY_DIVERGENCE:
                for temperature in (1.0, 0.7):
                    kw = dict(options, temperature=temperature, target=target,
                              reduction="none")
                    ref_loss, ref_grads = getattr(reference, name + "_value_and_grad")(
                        student, teacher, upstream, wrt=BOTH, **kw)
                    loss = getattr(fastloss, name)(student, teacher, **kw)
                    assert_close_contract(loss, ref_loss, dtype, "loss", path)
                    both = None
                    for wrt in EACH_GRADIENT:
                        value, grads = getattr(fastloss, name + "_value_and_grad")(
                            student, teacher, upstream, wrt=wrt, **kw)
                        grads = grads if isinstance(grads, tuple) else (grads,)
                        assert np.array_equal(value, loss), (path, name, wrt)
                        for what, grad in zip(wrt, grads):
                            ref = ref_grads[BOTH.index(what)]
                            assert_close_contract(grad, ref, dtype, "grad", (path, what))
                            assert np.all(grad[1] == 0)
                        if wrt == BOTH:
                            both = grads
                        elif both is not None:
                            assert np.array_equal(grads[0], both[BOTH.index(wrt[0])])
                    student_only = getattr(fastloss, name + "_grad")(student, teacher,
                                                                     upstream, **kw)
                    assert np.array_equal(student_only, both[0]), (path, name)


CLOSE_DIVERGENCES = EVERY_DIVERGENCE + [("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.9})]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, options", CLOSE_DIVERGENCES)
def test_teacher_equal_and_close_to_the_student(rng, dtype, name, options):
    """Teacher == student exactly (every term and gradient exactly 0), and close teachers
    (the student plus N(0, noise) for noise 1e-1, 1e-3 and 1e-5, where the divergence is
    of the order of noise**2 and q - p of noise) on every SIMD path, each set of gradients,
    rows of 3 chunks and a tail, at T = 1 and T = 0.7, against the reference within the
    contract.  Row 0 has a class both models rule out, row 1 a class whose probability
    underflows (to 0 in float32), row 2 a constant added to the teacher's logits."""
    student = (rng.standard_normal((3, 2 * 2048 + 1029)) * 3).astype(dtype)
    student[0, 11] = -np.inf
    student[1, 4100] = student[1].max() - 110.0
    with simd_paths() as paths:
        for path in paths:
            for temperature in (1.0, 0.7):
                kw = dict(options, temperature=temperature, reduction="none")
                loss, grads = getattr(fastloss, name + "_value_and_grad")(
                    student, student.copy(), 1.0, wrt=BOTH, **kw)
                assert np.all(loss == 0.0), path
                assert all(np.all(grad == 0.0) for grad in grads), path
                for noise in (1e-1, 1e-3, 1e-5):
                    close = (student + noise * rng.standard_normal(student.shape)).astype(dtype)
                    close[2] += dtype(0.25)
                    ref_loss, ref_grads = getattr(reference, name + "_value_and_grad")(
                        student, close, 1.0, wrt=BOTH, **kw)
                    assert np.all(ref_loss > 0)
                    where = (path, noise, temperature)
                    for wrt in EACH_GRADIENT:
                        loss, grads = getattr(fastloss, name + "_value_and_grad")(
                            student, close, 1.0, wrt=wrt, **kw)
                        grads = grads if isinstance(grads, tuple) else (grads,)
                        assert_close_contract(loss, ref_loss, dtype, "loss", where)
                        for what, grad in zip(wrt, grads):
                            assert_close_contract(grad, ref_grads[BOTH.index(what)], dtype,
                                                  "grad", (where, what))


def _exact_divergence(student, teacher, temperature, beta):
    """One row's divergence and gradients in 60-digit arithmetic (mpmath), from the
    definitions: log p - log q of the two log-softmaxes, no rearrangement."""
    import mpmath

    with mpmath.workdps(60):
        beta = mpmath.mpf(beta)
        temperature = mpmath.mpf(temperature)

        def log_softmax(x):
            scaled = [mpmath.mpf(float(v)) / temperature for v in x]
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in scaled))
            return [v - lse for v in scaled]

        log_q, log_p = log_softmax(student), log_softmax(teacher)
        q, p = [mpmath.exp(v) for v in log_q], [mpmath.exp(v) for v in log_p]
        if beta == 0:
            kl = mpmath.fsum(a * (b - c) for a, b, c in zip(p, log_p, log_q))
            return kl, [a - b for a, b in zip(q, p)], [a * (b - c - kl) for a, b, c
                                                      in zip(p, log_p, log_q)]
        if beta == 1:
            kl = mpmath.fsum(a * (b - c) for a, b, c in zip(q, log_q, log_p))
            return kl, [a * (b - c - kl) for a, b, c in zip(q, log_q, log_p)], [
                b - a for a, b in zip(q, p)]
        log_m = [mpmath.log(beta * b + (1 - beta) * a) for a, b in zip(q, p)]
        kl_p = mpmath.fsum(b * (lb - lm) for b, lb, lm in zip(p, log_p, log_m))
        kl_q = mpmath.fsum(a * (la - lm) for a, la, lm in zip(q, log_q, log_m))
        d_student = [(1 - beta) * a * (la - lm - kl_q) for a, la, lm in zip(q, log_q, log_m)]
        d_teacher = [beta * b * (lb - lm - kl_p) for b, lb, lm in zip(p, log_p, log_m)]
        return beta * kl_p + (1 - beta) * kl_q, d_student, d_teacher


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5, 0.1, 0.9])
@pytest.mark.parametrize("noise", [1e-6, 1e-2])
def test_reference_is_exact_for_close_pairs(rng, beta, noise):
    """The float64 reference itself, for a close pair, against 60-digit arithmetic
    (mpmath) from the definitions: the loss and both gradients within 1e-14 relative
    (the divergence is of the order of noise**2 = 1e-12 here, and a sum of p (log p -
    log q) in float64 would be off by about 1e-16 / 1e-12 of itself)."""
    student = rng.standard_normal((2, 9)) * 3
    teacher = student + noise * rng.standard_normal(student.shape)
    teacher[1] += 0.5  # the same distribution as teacher[1] - 0.5
    for temperature in (1.0, 0.7):
        value, grads = reference.jsd_value_and_grad(student, teacher, beta=beta,
                                                    temperature=temperature, wrt=BOTH,
                                                    reduction="none")
        for i in range(2):
            loss, d_student, d_teacher = _exact_divergence(student[i], teacher[i],
                                                           temperature, beta)
            assert abs(value[i] - float(loss)) <= 1e-14 * float(loss), (i, temperature)
            for grad, exact in zip(grads, (d_student, d_teacher)):
                exact = np.array([float(v) for v in exact]) / temperature
                scale = np.max(np.abs(exact))
                np.testing.assert_allclose(grad[i], exact, rtol=1e-14, atol=1e-15 * scale)


def _far_pair(rng, shape, dtype, distance, moved):
    """A student of 3-sigma logits and a teacher 0.5 sigma off it, with three classes of
    one model (``moved``) raised by ``distance``: that model puts nearly all its weight
    on them (one of them often holds nearly all of it) while the other gives them their
    ordinary odds, so that log q - log p and the divergence are both of the order of
    the distance where the other model's weight is."""
    student = rng.standard_normal(shape) * 3
    teacher = student + rng.standard_normal(shape) * 0.5
    classes = rng.choice(shape[-1], 3, replace=False)
    (student if moved == "student" else teacher)[..., classes] += distance
    return student.astype(dtype), teacher.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, options", DIVERGENCES)
@pytest.mark.parametrize("distance", [2.0, 3.0, 5.0, 10.0, 20.0, 1e3, 1e4])
@pytest.mark.parametrize("moved", ["student", "teacher"])
@pytest.mark.parametrize("n_classes", [50, 3000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_far_pairs_keep_the_contract(rng, dtype, name, options, moved, distance, n_classes,
                                     temperature):
    """Models far apart, or one of them nearly sure of one class: the gradients that
    subtract a total (the reverse KL's student's, the forward KL's teacher's, both of
    the JSD's) were the difference of two large rounded numbers and missed the contract
    by up to 3800x in float32 and 16000x in float64 (issue 16); the kernels take them
    relative to the heaviest class, and the JSD's, where that class is far into
    saturation (20 times the other model's probability), from the logits' own
    differences (a saturated gap rounded from y missed by up to 7.7x); distances 2 and 3
    put rows on both sides of that threshold.  (The reference takes them relative to
    the heaviest class too; the next test holds it to 60-digit arithmetic on these
    pairs.)"""
    student, teacher = _far_pair(rng, (12, n_classes), dtype, distance, moved)
    kw = dict(options, temperature=temperature, reduction="none")
    value, grads = getattr(fastloss, name + "_value_and_grad")(student, teacher, wrt=BOTH,
                                                                **kw)
    expected, expected_grads = getattr(reference, name + "_value_and_grad")(
        student, teacher, wrt=BOTH, **kw)
    assert_close_contract(value, expected, dtype, "loss")
    for grad, ref, what in zip(grads, expected_grads, BOTH):
        assert_close_contract(grad, ref, dtype, "grad", what)


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5, 0.1, 0.9])
@pytest.mark.parametrize("moved", ["student", "teacher"])
@pytest.mark.parametrize("distance", [5.0, 20.0, 1e3])
def test_reference_is_exact_for_far_pairs(rng, beta, moved, distance):
    """The float64 reference on far pairs (_far_pair) against 60-digit arithmetic from
    the definitions: the loss and both gradients within the float64 contract (taken as
    the difference of the gap and its total, the gradients missed it by up to 1300x)."""
    student, teacher = _far_pair(rng, (2, 40), np.float64, distance, moved)
    for temperature in (1.0, 0.7):
        value, grads = reference.jsd_value_and_grad(student, teacher, beta=beta,
                                                    temperature=temperature, wrt=BOTH,
                                                    reduction="none")
        exact_values = []
        exact_grads = ([], [])
        for i in range(2):
            loss, d_student, d_teacher = _exact_divergence(student[i], teacher[i],
                                                           temperature, beta)
            exact_values.append(float(loss))
            for into, exact in zip(exact_grads, (d_student, d_teacher)):
                into.append([float(v) / temperature for v in exact])
        assert_close_contract(value, np.array(exact_values), np.float64, "loss")
        for grad, exact, what in zip(grads, exact_grads, BOTH):
            assert_close_contract(grad, np.array(exact), np.float64, "grad", what)


def test_uint64_labels_above_int64_are_not_ignore_index():
    # Found by hunt10: a uint64 label of 2**64 - 100 was cast to int64 as -100, the
    # default ignore_index, and its row silently left out of the loss; it equals no int64
    # (the reference compares it so), so its row counts.
    rng = np.random.default_rng(11)
    student, teacher = rng.standard_normal((2, 4, 7))
    labels = np.array([2**64 - 100, 1, 2**63, 3], np.uint64)
    for ignore_index in (-100, 0, 1):
        got = fastloss.distill_kl(student, teacher, target=labels, ignore_index=ignore_index,
                                  reduction="none")
        expected = reference.distill_kl(student, teacher, target=labels,
                                        ignore_index=ignore_index, reduction="none")
        assert_close_contract(got, expected, np.float64, "loss")
        value, grad = fastloss.jsd_value_and_grad(student, teacher, target=labels,
                                                  ignore_index=ignore_index)
        ref_value, ref_grad = reference.jsd_value_and_grad(student, teacher, target=labels,
                                                           ignore_index=ignore_index)
        assert_close_contract(value, ref_value, np.float64, "loss")
        assert_close_contract(grad, ref_grad, np.float64, "grad")
    assert labels[0] == 2**64 - 100  # the caller's labels are left as they were


def test_one_buffer_for_both_gradients_is_refused():
    # Found by hunt10: out=(buffer, buffer) with wrt both logits returned the teacher's
    # gradient twice (the second overwrote the first); a buffer cannot hold both.
    rng = np.random.default_rng(12)
    student, teacher = rng.standard_normal((2, 3, 5))
    buffer = np.empty_like(student)
    both = ("student_logits", "teacher_logits")
    for out in ((buffer, buffer), (buffer, buffer[::-1])):
        with pytest.raises(ValueError, match="^out: .*share memory"):
            fastloss.distill_kl_grad(student, teacher, wrt=both, out=out)
        with pytest.raises(ValueError, match="^out: .*share memory"):
            fastloss.jsd_value_and_grad(student, teacher, wrt=both, out=out)
    # two buffers: each gradient in its own
    outs = (np.empty_like(student), np.empty_like(student))
    got = fastloss.distill_kl_grad(student, teacher, wrt=both, out=outs)
    expected = fastloss.distill_kl_grad(student, teacher, wrt=both)
    assert got[0] is outs[0] and got[1] is outs[1]
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("beta", [1e-3, 1e-7, 1e-12, 1e-16, 1 - 1e-7, 1 - 1e-12])
def test_jsd_with_beta_near_zero_or_one_keeps_the_contract(rng, dtype, beta):
    """beta in (0, 1) near either end: the JSD tends to beta KL(P || Q) (or its mirror),
    and its series near y = 0 come from the Bernoulli cumulants of the smaller of beta and
    1 - beta (from 1 - beta itself, rounded, the float64 loss lost 1e-12 relative at beta
    = 1e-7 and its fourth digit at 1e-12).  Close and far pairs, each set of gradients, on
    every SIMD path, against the reference within the contract."""
    student = (rng.standard_normal((4, 2048 + 301)) * 2).astype(dtype)
    far = (rng.standard_normal(student.shape) * 2).astype(dtype)
    close = (student + 0.05 * rng.standard_normal(student.shape)).astype(dtype)
    with simd_paths() as paths:
        for path in paths:
            for teacher in (close, far):
                kw = dict(beta=beta, reduction="none")
                loss, grads = fastloss.jsd_value_and_grad(student, teacher, 1.0, wrt=BOTH, **kw)
                ref_loss, ref_grads = reference.jsd_value_and_grad(student, teacher, 1.0,
                                                                   wrt=BOTH, **kw)
                assert np.all(ref_loss > 0)
                assert_close_contract(loss, ref_loss, dtype, "loss", what=(path, "loss"))
                for grad, ref_grad, name in zip(grads, ref_grads, BOTH):
                    assert_close_contract(grad, ref_grad, dtype, "grad", what=(path, name))
