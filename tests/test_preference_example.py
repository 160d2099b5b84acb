"""examples/preference.py runs (its default sizes, a few seconds of CPU) and passes its
own checks: every loss fastloss computes equals its plain torch formula (torchrl's
reward-model loss, TRL's concatenated forward and dpo_loss), the reward model ranks
held-out pairs, and DPO moves the policy toward the chosen answers."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "preference.py")


@pytest.mark.parametrize("loss_type", [
    "sigmoid",
    pytest.param("hinge", marks=pytest.mark.slow),  # each run is mostly torch's import
    pytest.param("ipo", marks=pytest.mark.slow),
])
def test_the_preference_example_passes_its_checks(tmp_path, loss_type):
    command = [sys.executable, EXAMPLE, "--loss-type", loss_type, "--steps", "150"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout
    assert done.stdout.count("check: ") == 7, done.stdout
    assert f"dpo ({loss_type}) from logits: the policy's gradients equal TRL's" in done.stdout
