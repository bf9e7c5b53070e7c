"""Render a results folder's report.html in headless Chromium and save a screenshot.

A check by eye that report.html reads as a page (tables, headings, figures) with no network:
Chromium runs with networking features off and the page has no external resources.

    apt-get install -y chromium          # Debian
    python bench/report_screenshot.py [docs/results/paper-offline] --png /tmp/report.png

The report is written afresh into a temporary folder (the results folder is not touched), so
the screenshot shows what the current code makes of those results.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mamf.report import write_report
from mamf.results import read_rows

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--hide-scrollbars"]


def screenshot(page: Path, png: Path, width: int, height: int) -> float:
    """Seconds Chromium took to load `page` and write `png`."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed (Debian: apt-get install -y chromium)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               f"--screenshot={png}", f"--window-size={width},{height}",
                               page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.is_file():
        sys.exit(f"chromium failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default=str(ROOT / "docs" / "results" / "paper-offline"),
                    help="a folder holding results.jsonl")
    ap.add_argument("--png", default="report.png", help="screenshot to write")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args()
    results = Path(args.results)
    rows = read_rows(results / "results.jsonl")
    if not rows:
        sys.exit(f"no results rows in {results}")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        files = write_report(rows, Path(tmp), results.name)
        written = time.perf_counter() - started
        size = files["html"].stat().st_size
        seconds = screenshot(files["html"], Path(args.png), args.width, args.height)
    print(f"report of {len(rows)} rows written in {written:.2f} s; report.html {size / 1024:.0f} "
          f"KiB, self-contained; chromium rendered it in {seconds:.2f} s -> {args.png}")


if __name__ == "__main__":
    main()
