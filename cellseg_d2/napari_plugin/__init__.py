"""napari plugin (npe2 manifest napari.yaml): the Segment cells widget and the label TIFF +
ROI zip writer. Needs the napari extra: pip install -e ".[napari]"."""
