"""The documentation: a short README, and a site that builds in MkDocs' strict mode with its generated pages."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_is_a_door_not_the_house():
    assert len((ROOT / "README.md").read_bytes()) <= 12_500


def test_the_site_builds_strictly_with_its_generated_pages(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (scripts/setup.sh installs it)")
    out = subprocess.run([sys.executable, "scripts/build_docs.py", "--build"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    tricks = (ROOT / "site" / "tricks" / "index.html").read_text()
    for option in ("reward_ensemble", "mean_min", "adv_estimator", "remax", "lite_ppo"):  # table and presets
        assert option in tricks
    for page in ("science", "estimators", "seed_papers", "atlas"):
        html = (ROOT / "site" / "results" / page / "index.html").read_text()
        assert "Data produced by commit" in html  # stamped with what produced its numbers
        assert "&lt;!-- include" not in html and "<!-- include" not in html  # every table was included


def test_every_option_file_says_what_it_does():
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_docs import tricks_table

    rows = tricks_table().splitlines()[2:]
    from rlhf_lab.config.schema import TRICK_GROUPS

    expected = sum(len(list((ROOT / "conf" / group).glob("*.yaml"))) for group in TRICK_GROUPS)
    assert len(rows) == expected and all(row.count("|") >= 4 and len(row.split("|")[3].strip()) > 10
                                         for row in rows)
