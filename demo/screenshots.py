"""Screenshots of the demo's tabs for the README, taken with Playwright in /usr/bin/chromium.

    python -m demo.screenshots --url http://127.0.0.1:7860/ --out docs/screenshots

Needs a running demo (``make demo``) and uses the bundled example: it runs the example (instant
when cached), runs (or resumes) a quick training for a minute and cancels it, which shows the loss
curve and the checkpoint kept for resuming, synthesizes a sentence and compares with two baselines trained with the
``tiny`` preset (a smoke test, labelled as such on the page). PNGs over ``MAX_BYTES`` are reduced
to a 256-colour palette.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MAX_BYTES = 300_000
VIDEO_READY = "(sel) => { const v = document.querySelector(sel + ' video'); return v && v.duration > 0; }"


def _save(page, path: Path) -> None:
    from PIL import Image

    page.screenshot(path=str(path), full_page=True)
    if path.stat().st_size > MAX_BYTES:
        img = Image.open(path).convert("RGB")
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        img = Image.open(path).convert("RGB")
        img.resize((img.width * 3 // 4, img.height * 3 // 4)).quantize(colors=128).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1000} KB)")


def take(url: str, out: Path, *, train_seconds: float = 60.0) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 860})
        page.goto(url)
        page.click("#run-example")
        page.wait_for_function(VIDEO_READY, arg="#example-video", timeout=900_000)
        page.wait_for_timeout(1500)
        _save(page, out / "start_here.png")

        page.get_by_role("tab", name="Your speaker").click()
        page.wait_for_selector("#speaker-summary h3", timeout=60_000)
        page.wait_for_timeout(1500)
        _save(page, out / "your_speaker.png")

        page.get_by_role("tab", name="Train").click()
        page.click("#train")
        page.wait_for_timeout(train_seconds * 1000)
        page.click("#cancel")
        page.wait_for_function("() => document.querySelector('#train-status').innerText.includes('resumes')",
                               timeout=120_000)
        page.wait_for_timeout(2500)  # the last curve, drawn once (a curve redrawn every second may be caught mid-way)
        _save(page, out / "train.png")

        page.get_by_role("tab", name="Drive it").click()
        drive = page.locator("#tab-drive")
        drive.get_by_label("Text (offline TTS)").check()
        drive.get_by_label("Text", exact=True).fill("Lay green with S six again.")
        page.click("#synthesize")
        page.wait_for_function(VIDEO_READY, arg="#drive-video", timeout=300_000)
        page.wait_for_timeout(1500)
        _save(page, out / "drive.png")

        page.get_by_role("tab", name="Compare").click()
        page.locator("#tab-compare").get_by_label("tiny", exact=True).check()
        page.click("#compare-run")
        page.wait_for_function(VIDEO_READY, arg="#compare-video", timeout=600_000)
        page.wait_for_timeout(1500)
        _save(page, out / "compare.png")
        browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo.screenshots", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860/")
    ap.add_argument("--out", default="docs/screenshots", type=Path)
    ap.add_argument("--train-seconds", type=float, default=60.0, help="how long the live training runs before its shot")
    args = ap.parse_args(argv)
    take(args.url, args.out, train_seconds=args.train_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
