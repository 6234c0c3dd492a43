from setuptools import find_packages, setup

setup(
    name="cellseg_d2",
    version="0.1.0",
    description="YOLACT instance segmentation of cells in phase-contrast microscopy, on Detectron2",
    packages=find_packages(include=["cellseg_d2", "cellseg_d2.*"]),
    python_requires=">=3.10,<3.11",
    # The pinned stack (torch 2.3.1, sal-detectron2 0.7.2, ...) is in requirements.txt and is
    # installed by tools/setup_env.sh; listing it here would let pip pick other torch builds.
    install_requires=["numpy<2", "opencv-python-headless", "pycocotools", "tqdm"],
    # Cellpose 3.x, the peer model of tools/peers/cellpose.py (its CPnet trains from random
    # weights); 4.x replaced it with a pretrained transformer.
    extras_require={"cellpose": ["cellpose>=3.1,<4"], "napari": ["napari[pyqt5]>=0.5"]},
    # The napari plugin: the Segment cells widget and the label TIFF + ROI zip writer.
    entry_points={"napari.manifest": ["cellseg-d2 = cellseg_d2.napari_plugin:napari.yaml"]},
    package_data={"cellseg_d2.napari_plugin": ["napari.yaml"]},
    include_package_data=True,
)
