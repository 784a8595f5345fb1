"""Seconds from a click on Generate to the result shown, in headless Debian chromium, per pipeline in DIR.

    python demos/click_to_result.py runs --repeats 3 [--screenshot demo.png]

Starts the demo on a free 127.0.0.1 port, and for each pipeline: opens the page, picks the model,
types a prompt, clicks Generate and waits until the first result element of the first tab is
visible (the page is reloaded before every click). Prints every run and the median per pipeline.
Needs `chromium` (`make system-data`) and Playwright (the test extra); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import time

from demos.app import VIEWS, DemoConfig, build_app, launch

PROMPT = "a red circle at the top left"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", metavar="DIR", help="a pipeline folder or a folder of runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="runs/demo_timing", help="the demo's output folder")
    parser.add_argument("--screenshot", default=None, help="save the last page of the first pipeline here")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        parser.error("Debian chromium is not installed: run `make system-data`")
    from playwright.sync_api import sync_playwright

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = DemoConfig(root=args.root, out=args.out, port=port)
    demo = build_app(config)
    launch(demo, config, block=False)
    entries = [e for e in demo.entries if e.pipeline is not None]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for entry in entries:
            pipe = entry.pipeline
            first = "let the model choose" if len(pipe.modalities) > 1 else f"{pipe.modality} ({pipe.head})"
            element = VIEWS[pipe.spec(pipe.modalities[0]).medium].element
            seconds = []
            for _ in range(args.repeats):
                page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
                page.get_by_label("model").click()
                page.get_by_role("option", name=entry.label, exact=True).click()
                page.get_by_role("tab", name=first, exact=True).filter(visible=True).first.wait_for(timeout=30_000)
                page.get_by_label("prompt").filter(visible=True).first.fill(PROMPT)
                button = page.get_by_role("button", name="Generate").filter(visible=True).first
                started = time.perf_counter()
                button.click()
                result = page.locator(f'{element}[src*="gradio_api/file="]').filter(visible=True).first
                result.wait_for(state="visible", timeout=600_000)
                seconds.append(time.perf_counter() - started)
                print(f"{entry.label}: {seconds[-1]:.2f} s from click to result", flush=True)
            print(f"{entry.label}: median {statistics.median(seconds):.2f} s over {args.repeats} "
                  f"(min {min(seconds):.2f}, max {max(seconds):.2f})", flush=True)
            if args.screenshot and entry is entries[0]:
                page.screenshot(path=args.screenshot, full_page=True)
        browser.close()
    demo.blocks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
