"""examples/train_lm.py trains its small language model in its --quick mode with each
loss path (torch's F.linear + F.cross_entropy, F.linear_cross_entropy and
fastloss.torch.linear_cross_entropy), and the loss curves it prints agree and go down.

The curves are read from the printed table and checked here, apart from the verdict the
script prints about them."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "train_lm.py")
PATHS = ["torch", "torch-lce", "fastloss"]
# float32 losses of paths that differ only in their roundings: a few units of 1e-7
# relative after the quick run's 6 steps (see the example's docstring)
RTOL = 1e-4


def _run(tmp_path, *args):
    # the installed fastloss, as a user runs the example (the checkout's own directory is
    # an unbuilt source tree in CI, so it must not come first on the path)
    done = subprocess.run([sys.executable, EXAMPLE, "--quick", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    return done


def _table(out, header):
    """The rows (lists of words) of the printed table that starts with `header`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [header])
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(line.split())
    return lines[start].split(), rows


def test_quick_run_curves_agree_and_decrease(tmp_path):
    done = _run(tmp_path, "--paths", *PATHS)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout

    _, speed_rows = _table(out, "path")
    assert [row[0] for row in speed_rows] == PATHS
    for row in speed_rows:
        tokens_per_second = float(row[1].replace(",", ""))
        assert tokens_per_second > 0

    header, curve_rows = _table(out.split("loss curves", 1)[1], "step")
    assert header == ["step"] + PATHS
    steps = np.array([int(row[0]) for row in curve_rows])
    assert list(steps) == list(range(1, 7))               # --quick: 6 steps, all printed
    curves = np.array([[float(value) for value in row[1:]] for row in curve_rows]).T
    assert np.all(np.isfinite(curves))
    torch_curve = curves[0]
    # near log(8000) at the start (the uniform prediction), then down
    assert abs(torch_curve[0] - np.log(8000)) < 0.5
    assert torch_curve[-1] < torch_curve[0] - 0.1
    for name, curve in zip(PATHS[1:], curves[1:]):
        np.testing.assert_allclose(curve, torch_curve, rtol=RTOL, atol=0, err_msg=name)
    # torch's two paths compute the same thing, in the same order
    assert np.array_equal(curves[1], torch_curve)
    assert out.count(" agrees with torch") == 2
    assert "(decreased)" in out


def _example_module():
    spec = importlib.util.spec_from_file_location("train_lm_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_and_batches():
    example = _example_module()
    ids, words, _ = example.build_corpus(1000)
    assert words[0] == example.UNKNOWN and len(words) == 1000 == len(set(words))
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 1000
    # the vocabulary is the most frequent tokens: every kept word occurs, most often first
    counts = np.bincount(ids, minlength=1000)
    assert np.all(counts[1:] > 0) and np.all(np.diff(counts[1:]) <= 0)
    assert "def" in words and "\n" in words
    again, words_again, _ = example.build_corpus(1000)
    assert words_again == words and np.array_equal(again, ids)

    inputs, target = example.batch_of(ids, 3, 4, 16, seed=0)
    assert inputs.shape == target.shape == (4, 16)
    assert np.array_equal(inputs[:, 1:], target[:, :-1])      # targets: the next token
    same_inputs, same_target = example.batch_of(ids, 3, 4, 16, seed=0)
    assert np.array_equal(same_inputs, inputs) and np.array_equal(same_target, target)
    assert not np.array_equal(example.batch_of(ids, 4, 4, 16, seed=0)[0], inputs)


def test_report_fails_on_curves_that_disagree(capsys):
    """The script's own verdict: exit status 1 when a curve leaves the tolerance or the
    loss does not go down, 0 otherwise."""
    example = _example_module()
    args = example.parse_args(["--quick", "--threads", "1"])
    curve = [9.0, 8.5, 8.2, 8.0, 7.9, 7.7]

    def result(path, losses):
        return {"path": path, "losses": losses, "seconds": [0.1] * 6,
                "step_peaks": [2**20] * 6, "run_peak": 2**21}

    close = [value * (1 + 0.5 * args.rtol) for value in curve]
    assert example.report(args, [result("torch", curve), result("fastloss", close)]) == 0
    assert "fastloss agrees with torch" in capsys.readouterr().out

    off = curve[:3] + [curve[3] * (1 + 2 * args.rtol)] + curve[4:]
    assert example.report(args, [result("torch", curve), result("fastloss", off)]) == 1
    assert "fastloss DISAGREES with torch" in capsys.readouterr().out

    flat = [9.0] * 6
    assert example.report(args, [result("torch", flat), result("fastloss", flat)]) == 1
    assert "DID NOT DECREASE" in capsys.readouterr().out
