"""Every SIMD path of every dispatched kernel family against the reference.

The kernels are compiled for three instruction sets (baseline, AVX2, AVX-512) and the
widest one the CPU runs is picked at import; ``fastloss._kernels.set_simd_path`` forces
another. On an AVX-512 machine the narrower paths would otherwise never run. Each family's
kernel variants run here on every path this CPU has:

- cross-entropy: the small-vocabulary path (16 rows per vector, C <= 64), the per-row path
  (one chunk and several chunks of 2048 classes), the rows read as double (soft-capped,
  float32 soft targets and label smoothing), the backward from a known lse, the in-place
  backward (``out=logits``), and info_nce, which runs on it;
- distances: the all-pairs pass (pairwise_distance, contrastive_pairwise; pairs recomputed
  from the rows next to duplicates), the sparse backward product and the float32 Gram
  product;
- elementwise: ``test_elementwise.py::test_every_simd_path_meets_the_contract``, and the
  pointwise losses of three inputs or a periodic quantile (sigmoid_focal, margin_ranking,
  poisson_nll, gaussian_nll, pinball) below, through ``ew_run``.

(contrastive and triplet_margin have one build for every CPU, contrastive_body.h.) CI also
runs the families' whole parity files once per path (``FASTLOSS_SIMD``, .ci/run), and
asserts here that the build has every path the CPU can run, so that no path is skipped
for want of a build.
"""

import os
import sys

import numpy as np
import pytest

import fastloss
from fastloss import _kernels
from fastloss.contrastive import _AllPairs
from loss_specs import (DTYPES, EMBEDDING_LAYOUTS, assert_close_contract, dtype_id,
                        make_ce_hard_inputs, make_ce_soft_inputs, random_embeddings)
from test_contrastive import FAMILIES_BY_NAME, check_family_against_reference
from test_cross_entropy import check_against_reference
from test_pointwise_kernels import CASES as POINTWISE_CASES
from test_pointwise_kernels import check_case as check_pointwise_case
from test_pointwise_kernels import \
    test_focal_float32_pass_keeps_every_element_to_the_contract as check_focal_float32


#: the CPU features each path needs (common.c's detect_simd_level)
PATH_FEATURES = {
    "avx2": ("avx2", "fma"),
    "avx512": ("avx512f", "avx512vl", "avx512dq", "avx512bw", "avx2", "fma"),
}

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where it cannot say."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.mark.skipif(cpu_flags() is None, reason="no /proc/cpuinfo to read the CPU's features")
@pytest.mark.parametrize("path", sorted(PATH_FEATURES))
def test_the_build_runs_every_path_this_cpu_has(path):
    # A path the CPU has but the build lacks (a compiler probe in setup.py that failed)
    # would make the tests of that path skip without a word.
    if not set(PATH_FEATURES[path]) <= cpu_flags():
        pytest.skip(f"this CPU has no {path}")
    saved = _kernels.build_info()["simd_path"]
    try:
        _kernels.set_simd_path(path)
    finally:
        _kernels.set_simd_path(saved)


def test_FASTLOSS_SIMD_picks_the_path():
    # CI runs the parity files under each path through this variable
    wanted = os.environ.get("FASTLOSS_SIMD", "").strip()
    if not wanted:
        pytest.skip("FASTLOSS_SIMD is not set")
    assert _kernels.build_info()["simd_path"] == wanted


# ----------------------------------------------------------------------------------------
# Cross-entropy
# ----------------------------------------------------------------------------------------

# (make_inputs, params, shape): 37 rows are two full blocks of 16 and a ragged one
CE_CASES = [
    pytest.param(make_ce_hard_inputs, {"weight": True, "ignore_fraction": 0.2}, (37, 10),
                 id="small-C10"),
    pytest.param(make_ce_hard_inputs, {"z_loss": 1e-3, "ignore_fraction": 0.2,
                                       "ignore_index": 3}, (37, 64), id="small-C64-z_loss"),
    pytest.param(make_ce_hard_inputs, {"weight": True, "label_smoothing": 0.1}, (37, 65),
                 id="row-C65-smoothing"),
    pytest.param(make_ce_hard_inputs, {"weight": True, "ignore_fraction": 0.2,
                                       "z_loss": 1e-3}, (5, 5000), id="row-3-chunks"),
    pytest.param(make_ce_hard_inputs, {"softcap": 4.0, "label_smoothing": 0.1}, (9, 2100),
                 id="wide-softcap-2-chunks"),
    pytest.param(make_ce_soft_inputs, {"weight": True, "label_smoothing": 0.1}, (9, 300),
                 id="wide-soft"),
    pytest.param(make_ce_soft_inputs, {"z_loss": 1e-3}, (37, 12), id="soft-C12"),
]


@dtypes
@pytest.mark.parametrize("make_inputs, params, shape", CE_CASES)
def test_cross_entropy_on_every_path(simd_path, make_inputs, params, shape, dtype, rng):
    (logits, target), options = make_inputs(rng, dtype, params, shape)
    # loss, loss and lse, grad, grad from lse, value_and_grad; every reduction
    check_against_reference(logits, target, **options)


@dtypes
@pytest.mark.parametrize("make_inputs, params, shape", CE_CASES)
def test_cross_entropy_in_place_on_every_path(simd_path, make_inputs, params, shape, dtype,
                                              rng):
    (logits, target), options = make_inputs(rng, dtype, params, shape)
    ref_loss, ref_grad = fastloss.reference.cross_entropy_value_and_grad(logits, target,
                                                                         **options)
    _, lse = fastloss.cross_entropy(logits, target, return_lse=True, **options)
    # the backward from lse, in place: the exps of a row go to a private row first
    grad = fastloss.cross_entropy_grad(logits.copy(), target, lse=lse, **options)
    in_place = logits.copy()
    assert fastloss.cross_entropy_grad(in_place, target, lse=lse, out=in_place,
                                       **options) is in_place
    assert_close_contract(in_place, ref_grad, dtype, "grad")
    assert np.array_equal(in_place, grad)
    in_place = logits.copy()
    loss, result = fastloss.cross_entropy_value_and_grad(in_place, target, out=in_place,
                                                         **options)
    assert result is in_place
    assert_close_contract(loss, ref_loss, dtype, "loss")
    assert_close_contract(in_place, ref_grad, dtype, "grad")


@dtypes
@pytest.mark.parametrize("variant", ["plain", "symmetric"])
def test_info_nce_on_every_path(simd_path, variant, dtype, rng):
    # its similarities go through the cross-entropy kernel (26 rows, 30 keys)
    query, _ = random_embeddings(rng, (26, 16), dtype, "cosine")
    key, _ = random_embeddings(rng, (26 if variant == "symmetric" else 30, 16), dtype,
                               "cosine")
    check_family_against_reference(FAMILIES_BY_NAME["info_nce"], (query, key),
                                   {"temperature": 0.1, "symmetric": variant == "symmetric"},
                                   dtype)


# ----------------------------------------------------------------------------------------
# Distances: the all-pairs pass, the sparse product, the float32 Gram
# ----------------------------------------------------------------------------------------

METRICS = ("euclidean", "sqeuclidean", "cosine")


def _clustered_with_duplicates(rng, shape, dtype, metric):
    """Clustered rows, some duplicated and some within 1e-5 of another (pairs the Gram
    form cannot give accurately: recomputed from the rows)."""
    x, labels = random_embeddings(rng, shape, dtype, metric)
    x[1] = x[0]
    x[5] = x[4] + np.asarray(1e-5, dtype)
    labels[5] = labels[4]
    return x, labels


@dtypes
@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distance_on_every_path(simd_path, metric, dtype, rng):
    x, _ = _clustered_with_duplicates(rng, (37, 11), dtype, metric)
    y, _ = random_embeddings(rng, (23, 11), dtype, metric)
    family = FAMILIES_BY_NAME["pairwise_distance"]
    check_family_against_reference(family, (x, None), {"metric": metric}, dtype)
    check_family_against_reference(family, (x, y), {"metric": metric}, dtype)


@dtypes
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("product", ["blas", "sparse"])
def test_contrastive_pairwise_on_every_path(simd_path, metric, product, dtype, rng,
                                            monkeypatch):
    # SPARSE_PRODUCT_DENSITY 0: the backward product is BLAS's; 1: the sparse kernel's
    monkeypatch.setattr(sys.modules["fastloss._all_pairs"], "SPARSE_PRODUCT_DENSITY",
                        1.0 if product == "sparse" else 0.0)
    x, labels = _clustered_with_duplicates(rng, (70, 12), dtype, metric)
    layout = EMBEDDING_LAYOUTS[metric]
    options = {"metric": metric, "pos_margin": layout["pos_margin"],
               "neg_margin": layout["neg_margin"]}
    check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
                                   options, dtype)
    check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
                                   options, dtype, reductions=("mean",), num_threads=2)


@pytest.mark.parametrize("metric", METRICS)
def test_contrastive_pairwise_float32_gram_on_every_path(simd_path, metric, rng,
                                                         monkeypatch):
    # the float32 Gram product (taken for large float32 batches whose pairs lie outside
    # their hinges), forced on a small batch: its pass reads a float32 Gram matrix
    monkeypatch.setattr(_AllPairs, "narrow_gram_pays", lambda self, *args: True)
    x, labels = _clustered_with_duplicates(rng, (70, 12), np.float32, metric)
    layout = EMBEDDING_LAYOUTS[metric]
    check_family_against_reference(
        FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
        {"metric": metric, "pos_margin": layout["pos_margin"],
         "neg_margin": layout["neg_margin"]}, np.float32)


# ----------------------------------------------------------------------------------------
# Pointwise losses (elementwise kernels with a third input or a periodic quantile)
# ----------------------------------------------------------------------------------------

@dtypes
@pytest.mark.parametrize("case", POINTWISE_CASES, ids=str)
def test_pointwise_losses_on_every_path(simd_path, case, dtype, rng):
    # 1000 x 8 elements: many tiles, each with its vector body and scalar remainder
    check_pointwise_case(case, dtype, rng, shape=(1001, 8))


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal_float32_pass_on_every_path(simd_path, gamma, rng):
    # sigmoid_focal's float32 arithmetic (hard labels), each element to the contract
    check_focal_float32(gamma, rng)
