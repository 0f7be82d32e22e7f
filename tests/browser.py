"""A Snakemake report.html as headless Chromium lays it out: where elements sit in the window at scroll position 0.

The page is a copy of the report with one script appended: after the report's own scripts have rendered it, the
script records getBoundingClientRect() of the asked elements and the window size into a <pre> element, which
Chromium's --dump-dom prints. Nothing is scrolled; positions are relative to the window's top-left corner."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Reports, for each name, the first element matching `selector` whose text starts with `text` (null when none):
# its box in window coordinates, plus the window's size and the largest scroll offset of any element.
_PROBE = """
<script>
window.addEventListener("load", () => setTimeout(() => {
  const wanted = %s;
  const out = {window: [window.innerWidth, window.innerHeight], boxes: {}};
  for (const [name, [selector, text]] of Object.entries(wanted)) {
    const el = [...document.querySelectorAll(selector)].find((e) => e.textContent.trim().startsWith(text));
    const r = el && el.getBoundingClientRect();
    out.boxes[name] = r ? {top: r.top, bottom: r.bottom, left: r.left, right: r.right} : null;
  }
  out.scrolled = Math.max(0, ...[...document.querySelectorAll("*")].map((e) => Math.max(e.scrollTop, e.scrollLeft)));
  const pre = document.createElement("pre");
  pre.id = "lssr-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 1000));
</script>
"""


def chromium() -> str:
    """The path of a Chromium (or Chrome) executable; the test is skipped, saying so, when none is installed."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium installed (Debian: apt-get install chromium); the browser check needs one")


def boxes(report: Path, wanted: dict[str, tuple[str, str]], size: tuple[int, int], tmp: Path) -> dict:
    """Load ``report`` in headless Chromium with a window of ``size`` (width, height) pixels and return
    {"window": [w, h], "boxes": {name: {top, bottom, left, right} or None}, "scrolled": px} for each
    name -> (CSS selector, start of the element's text) in ``wanted``."""
    html = report.read_text()
    head, sep, tail = html.rpartition("</body>")
    assert sep, f"{report}: no </body>"
    page = tmp / f"{report.stem}-probe.html"
    page.write_text(head + _PROBE % json.dumps(wanted) + sep + tail)
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={size[0]},{size[1]}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    found = re.search(r'<pre id="lssr-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"Chromium did not render {page} (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
