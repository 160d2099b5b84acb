"""Threads: bit-identical results for any thread count, the process-wide setting and its
environment variable, and concurrent calls from Python threads."""

import concurrent.futures
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import fastloss
from fastloss import reference
from loss_specs import (
    DTYPES,
    ELEMENTWISE_SPECS,
    EMBEDDING_LAYOUTS,
    REDUCTIONS,
    assert_close_contract,
    bitwise_equal,
    declared_params,
    dtype_id,
    make_ce_hard_inputs,
    make_ce_soft_inputs,
    random_embeddings,
    reference_loss_shape,
)

THREAD_COUNTS = (1, 2, 3, 7)

# Shapes that are big enough to be split across threads: many rows of a large vocabulary,
# a few rows of a huge one (more threads than rows), many short rows (the reduction spans
# many row blocks), and a 3-d batch.
SHAPES = [
    pytest.param((257, 3001), id="257x3001"),
    pytest.param((5, 100003), id="5x100003"),
    pytest.param((4099, 7), id="4099x7"),
    pytest.param((3, 37, 129), id="3x37x129"),
]

PROBLEMS = [
    pytest.param(make_ce_hard_inputs, {}, id="hard-plain"),
    pytest.param(make_ce_hard_inputs, {"weight": True, "ignore_fraction": 0.2,
                                       "label_smoothing": 0.1, "z_loss": 1e-3,
                                       "softcap": 8.0}, id="hard-all"),
    pytest.param(make_ce_soft_inputs, {"weight": True, "label_smoothing": 0.1,
                                       "z_loss": 1e-3}, id="soft-all"),
]


def every_result(logits, target, options, num_threads=None):
    """Loss, lse and gradients from every entry point and reduction, keyed by name."""
    batch_shape = logits.shape[:-1]
    results = {}
    for reduction in REDUCTIONS:
        opts = dict(options, reduction=reduction)
        if num_threads is not None:
            opts["num_threads"] = num_threads
        upstream = (np.linspace(-1.0, 2.0, int(np.prod(batch_shape))).reshape(batch_shape)
                    if reduction == "none" else 0.5)
        loss, lse = fastloss.cross_entropy(logits, target, return_lse=True, **opts)
        results[f"{reduction} loss"] = np.asarray(loss, dtype=np.float64 if
                                                  reduction != "none" else logits.dtype)
        results[f"{reduction} lse"] = lse
        results[f"{reduction} grad"] = fastloss.cross_entropy_grad(logits, target, upstream,
                                                                   **opts)
        results[f"{reduction} grad from lse"] = fastloss.cross_entropy_grad(
            logits, target, upstream, lse=lse, **opts)
        fused_loss, fused_grad = fastloss.cross_entropy_value_and_grad(
            logits, target, upstream, **opts)
        results[f"{reduction} fused loss"] = np.asarray(fused_loss, dtype=np.float64 if
                                                        reduction != "none" else logits.dtype)
        results[f"{reduction} fused grad"] = fused_grad
    return results


def assert_same_bits(results, expected, label):
    assert results.keys() == expected.keys()
    for key in expected:
        assert bitwise_equal(results[key], expected[key]), f"{key} differs with {label}"


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("make, params", PROBLEMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bit_identical_for_any_thread_count(shape, make, params, dtype, rng):
    (logits, target), options = make(rng, dtype, params, shape)
    single = every_result(logits, target, options, num_threads=1)
    for num_threads in THREAD_COUNTS[1:]:
        assert_same_bits(every_result(logits, target, options, num_threads), single,
                         f"num_threads={num_threads}")
    # ... and the shared answer is the right one.
    assert_close_contract(single["none loss"],
                          reference.cross_entropy(logits, target, reduction="none", **options),
                          dtype, "loss")
    assert_close_contract(single["mean fused grad"],
                          reference.cross_entropy_grad(logits, target, 0.5, **options),
                          dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_process_default_thread_count_gives_the_same_bits(dtype, rng, restore_num_threads):
    (logits, target), options = make_ce_hard_inputs(
        rng, dtype, {"weight": True, "ignore_fraction": 0.1, "label_smoothing": 0.1},
        (300, 2003))
    single = every_result(logits, target, options, num_threads=1)
    for num_threads in THREAD_COUNTS:
        fastloss.set_num_threads(num_threads)
        assert_same_bits(every_result(logits, target, options), single,
                         f"set_num_threads({num_threads})")


def test_set_and_get_num_threads(restore_num_threads):
    for num_threads in (1, 2, 3, 7, 64):
        fastloss.set_num_threads(num_threads)
        got = fastloss.get_num_threads()
        assert got == num_threads and isinstance(got, int)
    fastloss.set_num_threads(np.int64(5))
    assert fastloss.get_num_threads() == 5


@pytest.mark.parametrize("bad", [0, -1, -64])
def test_set_num_threads_rejects_values_below_one(bad, restore_num_threads):
    fastloss.set_num_threads(2)
    with pytest.raises(ValueError):
        fastloss.set_num_threads(bad)
    assert fastloss.get_num_threads() == 2


@pytest.mark.parametrize("bad", ["2", "4", 2.0, True])
def test_set_num_threads_rejects_counts_that_are_not_integers(bad, restore_num_threads):
    # a string is read only from FASTLOSS_NUM_THREADS, never as an argument
    fastloss.set_num_threads(2)
    with pytest.raises(ValueError, match="^n: expected an integer >= 1"):
        fastloss.set_num_threads(bad)
    assert fastloss.get_num_threads() == 2


def test_default_num_threads_is_positive():
    assert isinstance(fastloss.get_num_threads(), int) and fastloss.get_num_threads() >= 1


def run_python(code, unset=(), **environment):
    """Run ``code`` in a fresh interpreter that imports this same fastloss; return stdout.

    FASTLOSS_NUM_THREADS, OMP_NUM_THREADS and the names in ``unset`` are removed unless
    given."""
    env = dict(os.environ)
    for name in ("FASTLOSS_NUM_THREADS", "OMP_NUM_THREADS", *unset):
        env.pop(name, None)
    env.update(environment)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # cwd too: `-c` puts the working directory first on sys.path, where a source
    # checkout's unbuilt fastloss/ would shadow the installed one
    completed = subprocess.run([sys.executable, "-c", code], env=env, cwd=package_parent,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_a_huge_thread_count_is_capped_not_fatal():
    # Found by hunt10: num_threads=50000 on a call large enough to run threaded ended the
    # process (libgomp: "Thread creation failed: Resource temporarily unavailable"), and
    # 2**40 raised OverflowError. A thread count is an upper bound; the most a call uses is
    # fastloss._config.MAX_THREADS (the results are the same bits for any count).
    code = (
        "import numpy as np, fastloss\n"
        "from fastloss._config import MAX_THREADS\n"
        "x = np.linspace(-3, 3, 200000 * 8, dtype=np.float32).reshape(200000, 8)\n"
        "t = np.arange(200000) % 8\n"
        "one = fastloss.token_log_probs(x, t, num_threads=1)\n"
        "for n in (10**6, 2**40):\n"
        "    assert np.array_equal(fastloss.token_log_probs(x, t, num_threads=n), one)\n"
        "fastloss.set_num_threads(10**6)\n"
        "assert fastloss.get_num_threads() == MAX_THREADS\n"
        "assert np.array_equal(fastloss.token_log_probs(x, t), one)\n"
        "print('ok')\n")
    assert run_python(code) == "ok"


@pytest.mark.parametrize("value", ["1", "3", "7"])
def test_environment_variable_sets_the_default(value):
    code = "import fastloss; print(fastloss.get_num_threads())"
    assert run_python(code, FASTLOSS_NUM_THREADS=value) == value


@pytest.mark.parametrize("variable, value", [("FASTLOSS_SIMD", "bogus"),
                                             ("FASTLOSS_SIMD", "AVX2"),
                                             ("FASTLOSS_NUM_THREADS", "zero")])
def test_a_bad_environment_variable_is_named(variable, value):
    # FASTLOSS_SIMD=bogus said only "simd path 'bogus' is not available on this CPU or
    # build", naming no variable (fastloss's own num_threads errors name theirs)
    code = ("try:\n"
            "    import fastloss\n"
            "except ValueError as error:\n"
            "    print(error)\n")
    message = run_python(code, **{variable: value})
    assert message.startswith(f"{variable}: ") and repr(value) in message, message


def test_set_num_threads_overrides_the_environment_variable():
    code = "import fastloss; fastloss.set_num_threads(5); print(fastloss.get_num_threads())"
    assert run_python(code, FASTLOSS_NUM_THREADS="3") == "5"


def test_default_is_the_cpus_this_process_may_use():
    code = ("import os, fastloss\n"
            "usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') "
            "else os.cpu_count()\n"
            "print(fastloss.get_num_threads(), usable)\n")
    got, usable = run_python(code).split()
    assert got == usable
    if hasattr(os, "sched_setaffinity"):
        code = ("import os\n"
                "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
                "import fastloss\n"
                "print(fastloss.get_num_threads())\n")
        assert run_python(code) == "1"


def test_environment_variable_does_not_change_results():
    code = (
        "import hashlib, numpy as np, fastloss\n"
        "rng = np.random.default_rng(1234)\n"
        "logits = rng.standard_normal((301, 1009)).astype(np.float32)\n"
        "target = rng.integers(0, 1009, 301)\n"
        "loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, label_smoothing=0.1)\n"
        "print(np.float32(loss).tobytes().hex(), hashlib.sha256(grad.tobytes()).hexdigest())\n")
    rng = np.random.default_rng(1234)
    logits = rng.standard_normal((301, 1009)).astype(np.float32)
    target = rng.integers(0, 1009, 301)
    loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, label_smoothing=0.1,
                                                       num_threads=1)
    expected = f"{np.float32(loss).tobytes().hex()} {hashlib.sha256(grad.tobytes()).hexdigest()}"
    for value in ("1", "2", "7"):
        assert run_python(code, FASTLOSS_NUM_THREADS=value) == expected


def test_show_config_reports_openmp_and_threads(capsys):
    returned = fastloss.show_config()
    text = capsys.readouterr().out + (returned if isinstance(returned, str) else "")
    assert "openmp" in text.lower(), text
    assert str(fastloss.get_num_threads()) in text, text


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_concurrent_calls_from_python_threads(dtype):
    # Kernels release the GIL; calls running side by side in Python threads, each with its
    # own inputs, options, thread count and out= buffer, must each get their own answer.
    problems = []
    for index in range(16):
        rng = np.random.default_rng(index)
        make = make_ce_soft_inputs if index % 4 == 3 else make_ce_hard_inputs
        params = {"weight": index % 2 == 0, "label_smoothing": 0.05 * (index % 3),
                  "z_loss": 1e-3 * (index % 2)}
        if make is make_ce_hard_inputs:
            params["ignore_fraction"] = 0.1
        (logits, target), options = make(rng, dtype, params, (64 + 7 * index, 801 + index))
        problems.append((logits, target, options, 1 + index % 3))

    def compute(problem):
        logits, target, options, num_threads = problem
        buffer = logits.copy()
        loss, grad = fastloss.cross_entropy_value_and_grad(
            buffer, target, reduction="sum", num_threads=num_threads, out=buffer, **options)
        per_row = fastloss.cross_entropy(logits, target, reduction="none",
                                         num_threads=num_threads, **options)
        return loss, grad, per_row

    expected = [compute(problem) for problem in problems]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(2):
            results = list(pool.map(compute, problems))
            for index, (got, want) in enumerate(zip(results, expected)):
                assert got[0] == want[0], f"problem {index}: loss differs"
                assert bitwise_equal(got[1], want[1]), f"problem {index}: grad differs"
                assert bitwise_equal(got[2], want[2]), f"problem {index}: per-row loss differs"
    for (logits, target, options, _), (loss, grad, per_row) in zip(problems, expected):
        assert_close_contract(loss, reference.cross_entropy(logits, target, reduction="sum",
                                                            **options), dtype, "loss")
        assert_close_contract(grad, reference.cross_entropy_grad(logits, target,
                                                                 reduction="sum", **options),
                              dtype, "grad")


# --- regression and binary (elementwise) losses -----------------------------------------

# Many reduction blocks of 16384 elements with a ragged last one, as one long vector, as
# rows of a per-class factor that is longer than the 1024 it would be repeated to, and as
# a 3-d batch.
ELEMENTWISE_SHAPES = [
    pytest.param((210011,), id="210011"),
    pytest.param((129, 1031), id="129x1031"),
    pytest.param((7, 3, 4099), id="7x3x4099"),
]


def every_elementwise_result(spec, arrays, options, num_threads):
    """Loss and gradient from every entry point and reduction of an elementwise spec."""
    results = {}
    shape = reference_loss_shape(spec.name, arrays, options)
    for reduction in REDUCTIONS:
        opts = dict(options, reduction=reduction, num_threads=num_threads)
        upstream = (np.linspace(-1.0, 2.0, int(np.prod(shape))).reshape(shape)
                    if reduction == "none" else 0.5)
        results[f"{reduction} loss"] = np.asarray(spec.public.value(*arrays, **opts))
        results[f"{reduction} grad"] = spec.public.grad(*arrays, upstream, **opts)
        loss, grad = spec.public.value_and_grad(*arrays, upstream, **opts)
        results[f"{reduction} fused loss"] = np.asarray(loss)
        results[f"{reduction} fused grad"] = grad
    return results


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec", ELEMENTWISE_SPECS, ids=str)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
def test_elementwise_bit_identical_for_any_thread_count(shape, spec, dtype, rng):
    # the per-class factors each entry takes (weight; bce's pos_weight, pinball's
    # quantile): at 129x1031 they are longer than the 1024 they would be repeated to
    params = declared_params(spec.name, {"weight": "class", "pos_weight": "class",
                                         "quantile": "class"})
    if spec.name == "bce_with_logits":
        params.update(soft=True)
    arrays, options = spec.make_inputs(rng, dtype, params, shape)
    single = every_elementwise_result(spec, arrays, options, 1)
    for num_threads in THREAD_COUNTS[1:]:
        assert_same_bits(every_elementwise_result(spec, arrays, options, num_threads),
                         single, f"num_threads={num_threads}")
    assert_close_contract(single["sum loss"],
                          spec.reference.value(*arrays, reduction="sum", **options),
                          dtype, "loss")
    assert_close_contract(single["mean fused grad"],
                          spec.reference.grad(*arrays, 0.5, **options), dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_elementwise_concurrent_calls_from_python_threads(dtype):
    problems = []
    # every entry twice: plain, and with the per-class factors it takes (weight, quantile)
    for index, (spec, factors) in enumerate(
            (spec, factors) for spec in ELEMENTWISE_SPECS for factors in (False, True)):
        rng = np.random.default_rng(100 + index)
        params = declared_params(spec.name, {"weight": "class", "quantile": "class"}) \
            if factors else {}
        arrays, options = spec.make_inputs(rng, dtype, params, (50 + index % 10, 2001))
        problems.append((spec, arrays, options, 1 + index % 3))

    def compute(problem):
        spec, (pred, *others), options, num_threads = problem
        buffer = pred.copy()
        loss, grad = spec.public.value_and_grad(buffer, *others, 0.5, reduction="sum",
                                                out=buffer, num_threads=num_threads, **options)
        per_element = spec.public.value(pred, *others, reduction="none",
                                        num_threads=num_threads, **options)
        return loss, grad, per_element

    expected = [compute(problem) for problem in problems]
    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(compute, problems))
    for index, (got, want) in enumerate(zip(results, expected)):
        assert got[0] == want[0], f"problem {index}: loss differs"
        assert bitwise_equal(got[1], want[1]), f"problem {index}: grad differs"
        assert bitwise_equal(got[2], want[2]), f"problem {index}: per-element loss differs"


# --- pairwise distances and contrastive losses -------------------------------------------

# (function, rows, dim, variant, reduction) of the concurrent-calls test: the first eight have
# 40,000 pairs or more (200..260 rows: above the one-thread threshold of 2**15 for N x M
# work), or 2100 rows of pairs and triplets; the last two are small.
CONTRASTIVE_PROBLEMS = (
    ("pairwise_distance", 230, 32, "euclidean", "none"),
    ("pairwise_distance", 200, 16, "cosine-x,y", "none"),
    ("contrastive_pairwise", 260, 64, "euclidean", "mean"),
    ("contrastive_pairwise", 210, 48, "cosine", "none"),
    ("info_nce", 240, 32, "extra negatives", "sum"),
    ("info_nce", 200, 64, "symmetric", "none"),
    ("contrastive", 2100, 16, "sqeuclidean", "none"),
    ("triplet_margin", 2100, 16, "swap", "mean"),
    ("contrastive_pairwise", 37, 8, "sqeuclidean", "sum"),
    ("pairwise_distance", 41, 8, "sqeuclidean", "none"),
)


def contrastive_problem(index, dtype):
    """Inputs of CONTRASTIVE_PROBLEMS[index]: ``(name, args, options, reduction,
    num_threads)``, with num_threads 1, 2, 3 in turn."""
    name, n_rows, dim, variant, reduction = CONTRASTIVE_PROBLEMS[index]
    rng = np.random.default_rng(200 + index)
    num_threads = 1 + index % 3
    if name == "pairwise_distance":
        metric = variant.split("-")[0]
        x, _ = random_embeddings(rng, (n_rows, dim), dtype, metric)
        y = (random_embeddings(rng, (n_rows + 20, dim), dtype, metric)[0]
             if variant.endswith("x,y") else None)
        return name, (x, y), {"metric": metric}, reduction, num_threads
    if name == "contrastive_pairwise":
        x, labels = random_embeddings(rng, (n_rows, dim), dtype, variant)
        layout = EMBEDDING_LAYOUTS[variant]
        options = {"metric": variant, "pos_margin": layout["pos_margin"],
                   "neg_margin": layout["neg_margin"]}
        return name, (x, labels), options, reduction, num_threads
    if name == "info_nce":
        query, _ = random_embeddings(rng, (n_rows, dim), dtype, "cosine")
        # keys near their queries, so the positives matter
        key = query + 0.3 * rng.standard_normal(query.shape).astype(dtype)
        if variant == "extra negatives":
            key = np.concatenate([key, rng.standard_normal((7, dim)).astype(dtype)])
        options = {"temperature": 0.1, "symmetric": variant == "symmetric"}
        return name, (query, key), options, reduction, num_threads
    if name == "contrastive":
        rows, _ = random_embeddings(rng, (2 * n_rows, dim), dtype, variant)
        label = rng.integers(0, 2, n_rows)
        options = {"metric": variant, "margin": EMBEDDING_LAYOUTS[variant]["neg_margin"]}
        return name, (rows[:n_rows], rows[n_rows:], label), options, reduction, num_threads
    rows, _ = random_embeddings(rng, (3 * n_rows, dim), dtype, "euclidean")
    anchor, positive, negative = rows[:n_rows], rows[n_rows:2 * n_rows], rows[2 * n_rows:]
    # positives nearer their anchors, so the margin cuts through the triplets
    positive = (anchor + 0.6 * (positive - anchor)).astype(dtype)
    return (name, (anchor, positive, negative), {"p": 2.0, "swap": variant == "swap"},
            reduction, num_threads)


def contrastive_upstream(name, args, reduction, dtype):
    """grad_output: 0.5 for a reduced loss, a ramp of the unreduced loss's shape for "none"."""
    if reduction != "none":
        return 0.5
    x = args[0]
    if name == "pairwise_distance":
        shape = (x.shape[0], (x if args[1] is None else args[1]).shape[0])
    elif name == "contrastive_pairwise":
        shape = (x.shape[0], x.shape[0])
    else:
        shape = (x.shape[0],)
    return np.linspace(-1.0, 2.0, int(np.prod(shape))).reshape(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_contrastive_concurrent_calls_from_python_threads(dtype):
    # The distance kernels release the GIL (and contrastive_pairwise and info_nce call
    # NumPy's BLAS between them): side by side in Python threads, each call with its own
    # inputs, metric, reduction, thread count and out= buffers gets its own answer.
    problems = [contrastive_problem(index, dtype)
                for index in range(len(CONTRASTIVE_PROBLEMS))]

    def options_of(name, options, reduction, num_threads):
        options = dict(options, num_threads=num_threads)
        if name != "pairwise_distance":
            options["reduction"] = reduction
        return options

    def compute(problem):
        name, args, options, reduction, num_threads = problem
        opts = options_of(name, options, reduction, num_threads)
        upstream = contrastive_upstream(name, args, reduction, dtype)
        embeddings = [a for a in args if isinstance(a, np.ndarray) and a.ndim == 2]
        out = tuple(np.empty_like(x) for x in embeddings)
        loss, grads = getattr(fastloss, name + "_value_and_grad")(
            *args, upstream, out=out if len(out) > 1 else out[0], **opts)
        grads = grads if isinstance(grads, tuple) else (grads,)
        assert all(got is buffer for got, buffer in zip(grads, out))
        value = getattr(fastloss, name)(*args, **opts)
        return (np.asarray(loss),) + grads + (np.asarray(value),)

    expected = [compute(problem) for problem in problems]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(2):
            results = list(pool.map(compute, problems))
            for index, (got, want) in enumerate(zip(results, expected)):
                assert len(got) == len(want)
                for position, (a, b) in enumerate(zip(got, want)):
                    assert bitwise_equal(a, b), (
                        f"problem {index} ({problems[index][0]}): result {position} differs")
    for (name, args, options, reduction, _), results in zip(problems, expected):
        opts = options_of(name, options, reduction, None)
        del opts["num_threads"]
        upstream = contrastive_upstream(name, args, reduction, dtype)
        ref_loss, ref_grads = getattr(reference, name + "_value_and_grad")(*args, upstream,
                                                                            **opts)
        ref_grads = ref_grads if isinstance(ref_grads, tuple) else (ref_grads,)
        assert len(results) == len(ref_grads) + 2
        assert_close_contract(results[0], ref_loss, dtype, "loss", what=f"{name} loss")
        assert_close_contract(results[-1], ref_loss, dtype, "loss", what=f"{name} value")
        for position, (grad, ref) in enumerate(zip(results[1:-1], ref_grads)):
            assert_close_contract(grad, ref, dtype, "grad", what=f"{name} grad {position}")


@pytest.mark.parametrize("preset, expected", [
    ({}, "10000"),
    ({"GOMP_SPINCOUNT": "5"}, "5"),
    ({"OMP_WAIT_POLICY": "passive"}, None),
])
def test_import_sets_a_short_openmp_spin_only_by_default(preset, expected):
    # fastloss shortens libgomp's spin (GOMP_SPINCOUNT) so that a BLAS product after a
    # kernel does not share the cores with spinning threads; the process's own settings win.
    # (this process imported fastloss already, so its environment has the default)
    out = run_python("import os, fastloss; print(os.environ.get('GOMP_SPINCOUNT'))",
                     unset=("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"), **preset)
    assert out == str(expected)
