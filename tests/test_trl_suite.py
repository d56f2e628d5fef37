"""scripts/trl_suite.py, the harness that runs TRL's own GRPOTrainer tests against ThermoGRPOTrainer, on a TRL-shaped
checkout of its own: the stand-ins are built in a writable copy, plain TRL and thermorl run side by side, a test
that passes on plain TRL and fails with thermorl is reported (exit 1) unless it is a known exception, and a clone
without TRL's tests beside it skips the suite in one line (exit 0)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("trl_suite", ROOT / "scripts" / "trl_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRL_LIKE_TESTS = '''
from pathlib import Path

from trl import GRPOConfig, GRPOTrainer
from trl.import_utils import is_joblib_available  # newer TRL tests import it; the harness provides it


class TestGRPOTrainer:
    def test_runs_among_the_built_stand_ins(self):
        assert Path("hf_home/built").is_file() and callable(is_joblib_available)

    def test_is_plain_trl(self):
        assert GRPOTrainer.__name__ == "GRPOTrainer"

    def test_known(self):
        assert GRPOConfig.__name__ == "GRPOConfig"

    def test_needs_the_hub(self):
        raise OSError("no stand-in for this model")
'''

# Shaped like the shared stand-ins: a build script run where the stand-ins go, and a conftest swapping thermorl's
# classes into the test module under THERMO_SWAP=1.
BUILD_STANDINS = '''
from pathlib import Path

Path("hf_home").mkdir()
Path("hf_home/built").touch()
'''
STANDINS_CONFTEST = '''
import os

import pytest


@pytest.fixture(autouse=True)
def swap(request, monkeypatch):
    if os.environ["THERMO_SWAP"] == "1":
        from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer

        monkeypatch.setattr(request.module, "GRPOTrainer", ThermoGRPOTrainer)
        monkeypatch.setattr(request.module, "GRPOConfig", ThermoGRPOConfig)
'''


def trl_like_checkout(root):
    """root/tests (a TRL-shaped test package) and root/standins (read-only, as the shared folder is)."""
    tests, standins = root / "tests", root / "standins"
    tests.mkdir(parents=True)
    (tests / "__init__.py").touch()
    (tests / "test_grpo_trainer.py").write_text(TRL_LIKE_TESTS)
    standins.mkdir()
    (standins / "build_standins.py").write_text(BUILD_STANDINS)
    (standins / "conftest.py").write_text(STANDINS_CONFTEST)
    for path in (*standins.iterdir(), standins):
        path.chmod(0o555)
    return tests


def test_a_test_that_only_plain_trl_passes_is_reported_unless_known(suite, tmp_path, monkeypatch, capsys):
    tests = trl_like_checkout(tmp_path / "trl-tests")
    monkeypatch.setattr(suite, "KNOWN_EXCEPTIONS", {"TestGRPOTrainer::test_known": "the config is thermorl's"})
    assert suite.main([str(tests), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "1 of 4 tests pass with thermorl; of the 3 others 2 pass on plain TRL" in out
    assert "TestGRPOTrainer::test_is_plain_trl: failed" in out
    assert "TestGRPOTrainer::test_known: failed" in out and "[known: the config is thermorl's]" in out
    assert "1 unexpected" in out and "test_needs_the_hub" not in out
    # thermorl's run was split over two processes; plain TRL ran only the tests thermorl did not pass.
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (tmp_path / "out" / "thermorl-1.xml").is_file() and len(summary["thermorl"]) == 4
    assert sorted(summary["plain"]) == ["TestGRPOTrainer::test_is_plain_trl", "TestGRPOTrainer::test_known",
                                        "TestGRPOTrainer::test_needs_the_hub"]

    monkeypatch.setattr(suite, "KNOWN_EXCEPTIONS", {"TestGRPOTrainer::test_known": "x",
                                                    "TestGRPOTrainer::test_is_plain_trl": "y"})
    assert suite.main([str(tests), "--out", str(tmp_path / "out"), "--jobs", "1"]) == 0  # the earlier --out goes


def test_a_checkout_where_nothing_passes_on_plain_trl_fails(suite, tmp_path, capsys):
    tests = trl_like_checkout(tmp_path / "trl-tests")
    (tests / "test_grpo_trainer.py").write_text("def test_broken():\n    raise RuntimeError('no')\n")
    assert suite.main([str(tests), "--out", str(tmp_path / "out"), "--jobs", "1"]) == 1
    assert "no test passed with thermorl or plain TRL, nothing was compared" in capsys.readouterr().out


def test_an_absent_folder_is_one_line_and_exit_0(suite, tmp_path, capsys):
    assert suite.main([str(tmp_path / "shared" / "trl-tests" / "tests")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "absent" in out


def test_a_folder_without_trls_tests_is_one_line_and_exit_2(suite, tmp_path, capsys):
    assert suite.main([str(tmp_path)]) == 2
    assert "test_grpo_trainer.py not found" in capsys.readouterr().err
