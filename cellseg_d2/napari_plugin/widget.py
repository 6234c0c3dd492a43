"""The napari dock widget: segment an image layer with a trained model folder (in a worker
thread, a progress bar over its tiles), see the cells per class, correct the Labels layer by
hand, and save image + labels as training data for `tools/train_real.py --data FOLDER`."""
from __future__ import annotations

import os

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..data.sartorius import SARTORIUS_CLASSES
from ..data.training_folder import append_example
from .segment import CONFIG, WEIGHTS, Model, segment, voted_type


class _Progress(QObject):
    """Carries (tiles done, tiles) from the worker thread to the progress bar (queued)."""
    tile = Signal(int, int)


def _folder_row(edit: QLineEdit, title: str) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(edit)
    browse = QPushButton("...")
    browse.setMaximumWidth(32)

    def choose():
        chosen = QFileDialog.getExistingDirectory(edit, title, edit.text() or os.getcwd())
        if chosen:
            edit.setText(chosen)

    browse.clicked.connect(choose)
    row.addWidget(browse)
    return row


class CellSegWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._models = {}  # folder -> (its files' mtimes, Model)
        self.worker = None
        self.last = None  # the last Segmentation
        self._progress = _Progress()
        self._progress.tile.connect(self._on_tile)

        self.model_dir = QLineEdit()
        self.model_dir.setPlaceholderText("folder with config.yaml + model_final.pth")
        self.image_layer = QComboBox()
        self.score = QDoubleSpinBox()
        self.score.setRange(0.0, 1.0)
        self.score.setSingleStep(0.05)
        self.score.setSpecialValueText("model's")  # 0: the model's TEST.INSTANCE_SCORE_THRESH
        self.diameter = QDoubleSpinBox()
        self.diameter.setRange(0.0, 10000.0)
        self.diameter.setSuffix(" px")
        self.diameter.setSpecialValueText("model")  # 0: the training cells' diameter (MODEL.CELL_DIAMETER)
        self.diameter.setMinimumWidth(110)
        self.auto = QCheckBox("auto")
        self.auto.toggled.connect(lambda on: self.diameter.setEnabled(not on))
        self.run_button = QPushButton("Segment")
        self.run_button.clicked.connect(self.segment)
        self.bar = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        seg = QFormLayout()
        seg.addRow("model", _folder_row(self.model_dir, "Trained model folder"))
        seg.addRow("image", self.image_layer)
        seg.addRow("score threshold", self.score)
        diameter = QHBoxLayout()
        diameter.addWidget(self.diameter)
        diameter.addWidget(self.auto)
        seg.addRow("cell diameter", diameter)
        seg.addRow(self.run_button)
        seg.addRow(self.bar)
        seg.addRow(self.status)

        self.train_dir = QLineEdit()
        self.train_dir.setPlaceholderText("training folder (new, or one saved here before)")
        self.labels_layer = QComboBox()
        self.cell_type = QComboBox()
        self.cell_type.addItems(SARTORIUS_CLASSES)
        self.save_button = QPushButton("Save as training data")
        self.save_button.clicked.connect(self.save_training_data)
        self.save_status = QLabel("")
        self.save_status.setWordWrap(True)
        train = QFormLayout()
        train.addRow("folder", _folder_row(self.train_dir, "Training folder"))
        train.addRow("labels", self.labels_layer)
        train.addRow("cell type", self.cell_type)
        train.addRow(self.save_button)
        train.addRow(self.save_status)
        box = QGroupBox("Corrected labels -> training data")
        box.setLayout(train)

        layout = QVBoxLayout(self)
        layout.addLayout(seg)
        layout.addWidget(box)
        layout.addStretch()
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed,
                      napari_viewer.layers.events.reordered):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    def _refresh_layers(self, event=None):
        for combo, kind in ((self.image_layer, Image), (self.labels_layer, Labels)):
            current = combo.currentText()
            combo.clear()
            names = [layer.name for layer in self.viewer.layers if isinstance(layer, kind)]
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)

    def _layer(self, combo: QComboBox):
        name = combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def model(self, folder: str = None) -> Model:
        """The model of ``folder`` (default: the one chosen), loaded again when its files have
        changed since (a model retrained into the same folder)."""
        folder = os.path.abspath(os.path.expanduser(folder or self.model_dir.text().strip()))
        stamp = tuple(os.stat(os.path.join(folder, f)).st_mtime_ns
                      if os.path.isfile(os.path.join(folder, f)) else None
                      for f in (CONFIG, WEIGHTS))
        if self._models.get(folder, (None, None))[0] != stamp:
            self._models[folder] = (stamp, Model(folder))
        return self._models[folder][1]

    def segment(self):
        """Start segmenting the chosen image layer; returns the worker (None if refused)."""
        layer = self._layer(self.image_layer)
        if layer is None or not self.model_dir.text().strip():
            self.status.setText("choose a model folder and an image layer")
            return None
        if layer.rgb is False and np.ndim(layer.data) != 2:
            self.status.setText(f"{layer.name}: a 2-D image is segmented (this layer is "
                                f"{np.ndim(layer.data)}-D)")
            return None
        data = np.asarray(layer.data)
        score = self.score.value() or None
        diameter = "auto" if self.auto.isChecked() else (self.diameter.value() or None)
        folder = self.model_dir.text().strip()

        def work():  # in the worker thread: no widget is touched here
            model = self.model(folder)
            return model, segment(model, data, "RGB", score, diameter,
                                  on_progress=self._progress.tile.emit)

        self.run_button.setEnabled(False)
        self.bar.setRange(0, 0)  # busy until the first tile is done
        self.status.setText(f"segmenting {layer.name} ...")
        self.worker = create_worker(work, _start_thread=False)
        self.worker.returned.connect(lambda result: self._add_result(layer.name, folder, *result))
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(lambda: self.run_button.setEnabled(True))
        self.worker.start()
        return self.worker

    def _on_tile(self, done: int, total: int):
        self.bar.setRange(0, total)
        self.bar.setValue(done)

    def _on_error(self, error: Exception):
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.status.setText(f"error: {error}")

    def _add_result(self, image_name: str, folder: str, model, seg):
        self.last = seg
        ids = np.arange(1, len(seg.classes) + 1)
        layer = self.viewer.add_labels(
            seg.label, name=f"{image_name} cells",
            features={"index": ids, "class": seg.classes, "score": seg.scores},
            metadata={"cellseg_d2": {"model": folder, "image": image_name,
                                     "diameter_px": seg.diameter}})
        self.labels_layer.setCurrentText(layer.name)
        found = voted_type(seg)
        if found in SARTORIUS_CLASSES:
            self.cell_type.setCurrentText(found)
        counts = ", ".join(f"{name} {n}" for name, n in seg.counts.items())
        diameter = f"; cell diameter {seg.diameter:g} px" if seg.diameter else ""
        self.status.setText(f"{len(seg.classes)} cells ({counts}){diameter}")

    def save_training_data(self):
        """Append the chosen (corrected) Labels layer and the image it was segmented from (or,
        for a Labels layer made otherwise, the chosen image layer) to the training folder;
        returns the file name written, or None with the reason shown."""
        labels = self._layer(self.labels_layer)
        # the image a Labels layer was segmented from, else the chosen image layer
        source = (labels.metadata.get("cellseg_d2", {}).get("image") if labels is not None
                  else None)
        image = (self.viewer.layers[source] if source in self.viewer.layers else
                 self._layer(self.image_layer))
        folder = self.train_dir.text().strip()
        if image is None or labels is None or not folder:
            self.save_status.setText("choose a training folder, an image and a labels layer")
            return None
        try:
            name = append_example(os.path.expanduser(folder), image.name, np.asarray(image.data),
                                  np.asarray(labels.data), self.cell_type.currentText())
        except (ValueError, OSError) as e:
            self.save_status.setText(f"error: {e}")
            return None
        cells = len(np.unique(np.asarray(labels.data))) - 1
        self.save_status.setText(f"saved {name} ({cells} cells, {self.cell_type.currentText()}) "
                                 f"to {folder}: train with tools/train_real.py --data {folder}")
        return name


def segment_in_viewer(viewer, model_folder: str, image_path: str, score: float = 0.0,
                      diameter=None, timeout: float = 600.0):
    """Open ``image_path`` in ``viewer`` with napari's own reader, dock the plugin's widget (as
    its Plugins menu does), segment the image with it and wait for the Labels layer, processing
    Qt events meanwhile: the scripted path of a user's clicks (tests/test_napari_plugin.py, the
    README's screenshot: tools/napari_screenshot.py). Returns (widget, image layer, labels
    layer)."""
    import time

    from qtpy.QtWidgets import QApplication

    image = viewer.open(image_path)[0]
    _, widget = viewer.window.add_plugin_dock_widget("cellseg-d2", "Segment cells")
    widget.model_dir.setText(str(model_folder))
    widget.image_layer.setCurrentText(image.name)
    widget.score.setValue(score)
    if diameter == "auto":
        widget.auto.setChecked(True)
    else:
        widget.auto.setChecked(False)
        widget.diameter.setValue(diameter or 0.0)
    before = len(viewer.layers)
    worker = widget.segment()
    if worker is None:
        raise RuntimeError(widget.status.text())
    end = time.time() + timeout
    while len(viewer.layers) == before and not widget.status.text().startswith("error"):
        if time.time() > end:
            raise TimeoutError(f"segmenting {image_path} took more than {timeout:.0f} s")
        QApplication.processEvents()
        time.sleep(0.02)
    if widget.status.text().startswith("error"):
        raise RuntimeError(widget.status.text())
    return widget, image, viewer.layers[-1]
