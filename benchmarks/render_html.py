"""Render a report.html in a real headless browser (Debian's chromium) and save a PNG.

    python benchmarks/render_html.py reports/nightly/report.html /tmp/report.png

Install the browser with ``apt-get install -y chromium`` if it is missing. The
browser runs with networking features off and a throw-away profile; the report
itself forbids every fetch (Content-Security-Policy), so what renders is what a
reviewer sees offline. Prints the command, the time it took and the PNG size.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("html", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--size", default="1280,2400", help="window size WIDTH,HEIGHT")
    a = ap.parse_args()
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    if browser is None:
        sys.exit("no chromium found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               f"--screenshot={a.png.resolve()}", f"--window-size={a.size}",
               a.html.resolve().as_uri()]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        dt = time.perf_counter() - t0
    print(" ".join(cmd))
    if res.returncode != 0 or not a.png.exists():
        print(res.stderr[-2000:])
        sys.exit(f"chromium failed with exit code {res.returncode}")
    print(f"rendered {a.html} ({a.html.stat().st_size / 1024:.0f} kB) in {dt:.1f} s -> "
          f"{a.png} ({a.png.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
