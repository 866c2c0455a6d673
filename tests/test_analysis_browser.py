"""The HTML report as a person sees it: headless Chromium renders it, its images decode, it is not blank."""

import re
import shutil
import subprocess

import pytest
from analysis_fixtures import write_sweep
from PIL import Image

from analysis import load_runs, write_report

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

# Appended to a copy of the report: after load, writes how many <img> decoded into the DOM. The broken
# image is a control that proves the check can fail.
PROBE = """<img id="broken-control" src="data:image/png;base64,AAAA" alt="control">
<script>window.addEventListener("load", () => {
  const images = [...document.images];
  const probe = document.createElement("p");
  probe.id = "probe";
  probe.textContent = `decoded ${images.filter(i => i.complete && i.naturalWidth > 0).length} of ${images.length}`;
  document.body.appendChild(probe);
});</script>
"""


def _chromium(tmp_path, *args) -> str:
    """Run headless Chromium with a throwaway profile; return its stdout."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    """A report of a small two-arm sweep, with the effects of vanilla against ppo_max."""
    sweep = write_sweep(tmp_path_factory.mktemp("browser") / "sweep", {"vanilla": 50, "ppo_max": None},
                        seeds=(0, 1), n_steps=120)
    runs, traces = load_runs(sweep)
    return write_report(runs, traces, sweep / "report", baseline="ppo_max")


def test_every_image_of_the_report_decodes(report_html, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(report_html.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    decoded, total = map(int, re.search(r'<p id="probe">decoded (\d+) of (\d+)</p>', dom).groups())
    figures = report_html.read_text().count("<img")  # traces, frontier, effects' forest plot, survival...
    assert figures >= 4
    assert total == figures + 1  # and the broken control
    assert decoded == figures


def test_screenshot_is_not_blank(report_html, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", report_html.as_uri())
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 2000)
    low, high = image.getextrema()
    assert high - low > 100
    non_white = sum(count for level, count in enumerate(image.histogram()) if level < 240)
    assert non_white > 0.05 * image.width * image.height
