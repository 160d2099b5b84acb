"""The developer path: a source checkout whose C extension was never built.

``pip install .`` builds the extension into site-packages and leaves the checkout's
``fastloss/`` without it. ``python -m pytest`` or ``python -c "import fastloss"`` in that
checkout put the current directory first on ``sys.path``, so the unbuilt copy is the one
imported. Importing it must say what happened and what to run, not fail as a circular
import, and must never borrow the compiled kernels of another copy.
"""
import os
import shutil
import subprocess
import sys

import pytest

import fastloss

PACKAGE_DIR = os.path.dirname(os.path.abspath(fastloss.__file__))
PACKAGE_PARENT = os.path.dirname(PACKAGE_DIR)


@pytest.fixture
def unbuilt_checkout(tmp_path):
    """A copy of this fastloss's Python files without its compiled extension: what a
    checkout looks like after ``pip install .``."""
    checkout = tmp_path / "checkout"
    shutil.copytree(PACKAGE_DIR, checkout / "fastloss",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    return checkout


def run_in(directory, *args, path=(), unset=("PYTHONPATH",)):
    """``python ARGS`` in ``directory`` with ``path`` as PYTHONPATH; the CompletedProcess."""
    env = dict(os.environ)
    for name in unset:
        env.pop(name, None)
    if path:
        env["PYTHONPATH"] = os.pathsep.join(str(entry) for entry in path)
    return subprocess.run([sys.executable, *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_says_what_to_run(completed, checkout):
    assert completed.returncode != 0
    message = completed.stderr
    assert "ImportError" in message
    assert "circular import" not in message
    assert "no compiled extension" in message and "never built" in message
    assert str(checkout / "fastloss") in message
    assert "pip install -e ." in message and str(checkout) in message
    return message


def test_importing_an_unbuilt_checkout_says_what_to_run(unbuilt_checkout):
    # -S: no site-packages, so no other fastloss anywhere: the message offers to install
    completed = run_in(unbuilt_checkout, "-S", "-c", "import fastloss")
    message = assert_says_what_to_run(completed, unbuilt_checkout)
    assert "pip install ." in message and "run from another directory" in message


def test_the_message_names_the_installed_copy_it_hides(unbuilt_checkout):
    # the fastloss under test stands in for the installed one, after the current directory
    completed = run_in(unbuilt_checkout, "-c", "import fastloss", path=[PACKAGE_PARENT])
    message = assert_says_what_to_run(completed, unbuilt_checkout)
    assert f"to use the installed fastloss ({PACKAGE_DIR})" in message
    assert "run from another directory" in message


def test_an_unbuilt_checkout_never_borrows_another_copys_kernels(unbuilt_checkout):
    # setuptools' editable installs add a finder that resolves every fastloss.X to the
    # installed checkout's file, whichever fastloss/ was imported: an unbuilt copy would
    # then run its Python over another checkout's compiled kernels.
    code = f"""
import importlib.machinery, sys

class EditableFinder:  # as setuptools' __editable__ finder does for fastloss.X
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        parent, _, child = fullname.rpartition(".")
        if parent == "fastloss":
            return importlib.machinery.PathFinder.find_spec(fullname, [{PACKAGE_DIR!r}])
        return None

sys.meta_path.append(EditableFinder)
import fastloss
"""
    completed = run_in(unbuilt_checkout, "-c", code)
    assert_says_what_to_run(completed, unbuilt_checkout)


def test_python_m_pytest_in_an_unbuilt_checkout_says_what_to_run(unbuilt_checkout):
    tests = unbuilt_checkout / "tests"
    tests.mkdir()
    (tests / "test_import.py").write_text("import fastloss\n\n\ndef test_import():\n"
                                          "    assert fastloss.cross_entropy\n")
    completed = run_in(unbuilt_checkout, "-m", "pytest", "-p", "no:cacheprovider", "tests",
                       path=[PACKAGE_PARENT])
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    assert "circular import" not in output
    assert "no compiled extension" in output and "pip install -e ." in output


def test_a_built_copy_imports_from_the_current_directory(tmp_path):
    # the check must not reject what pip install -e . and build_ext --inplace make
    checkout = tmp_path / "built"
    shutil.copytree(PACKAGE_DIR, checkout / "fastloss",
                    ignore=shutil.ignore_patterns("__pycache__"))
    completed = run_in(checkout, "-c", "import fastloss; print(fastloss._kernels.__file__)")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().startswith(str(checkout / "fastloss"))
