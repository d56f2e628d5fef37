"""The README and docs/ stand alone in a fresh clone: the set-up note's command puts `thermorl` on the PATH, and every
relative link points to a file of the repository."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_says_how_to_run_thermorl_after_set_up():
    readme = (REPO / "README.md").read_text()
    set_up_note = readme[readme.index("bash scripts/test.sh"):readme.index("thermorl is reinforcement-learning")]
    activate = re.search(r"`(source \S+/bin/activate)`", set_up_note)
    assert activate is not None, set_up_note
    # A shell without the virtual environment on its PATH, as after `bash scripts/quickstart.sh`.
    result = subprocess.run(["bash", "-c", f"{activate.group(1)} && thermorl list"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "losses (policy_loss" in result.stdout


def test_relative_links_point_into_the_repository():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve()
            if not path.is_relative_to(REPO) or not path.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert broken == []
    assert all("ALGORITHMS.md" not in doc.read_text() for doc in DOCS)
