#!/usr/bin/env python
"""The README's napari screenshot, taken by the scripted path of the plugin's test
(napari_plugin.widget.segment_in_viewer: open the image, dock the widget, Segment).

    tools/napari_screenshot.py --model output/real_cpu \
        --image ../shared/data/sartorius_recon/train/<id>.png --output docs/napari_widget.png

Runs on a virtual screen (Xvfb) where there is no display.
"""
import argparse
import os
import sys

from cellseg_d2.config import SetupError
from cellseg_d2.napari_plugin.display import ensure_display
from cellseg_d2.napari_plugin.widget import segment_in_viewer
from cellseg_d2.utils import atomic_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="trained model folder (config.yaml + "
                   "model_final.pth)")
    p.add_argument("--image", required=True)
    p.add_argument("--output", required=True, help="PNG to write")
    p.add_argument("--diameter", help="cell diameter in px, or auto (default: the model's)")
    p.add_argument("--size", default="1400x900", help="window size, WxH")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    diameter = args.diameter if args.diameter in (None, "auto") else float(args.diameter)
    try:
        ensure_display(f"{width + 100}x{height + 100}x24")
        import napari
        from qtpy.QtWidgets import QApplication

        viewer = napari.Viewer()  # shown (on the virtual screen): the canvas gets its size
        try:
            viewer.window._qt_window.resize(width, height)
            widget, _, _ = segment_in_viewer(viewer, args.model, args.image, diameter=diameter)
            status = widget.status.text()
            QApplication.processEvents()
            viewer.reset_view()
            with atomic_path(args.output) as tmp:  # napari picks the format by extension
                viewer.screenshot(tmp + ".png", canvas_only=False)
                os.replace(tmp + ".png", tmp)
        finally:
            viewer.close()
    except (SetupError, RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{status} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
