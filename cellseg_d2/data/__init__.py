"""Datasets: importing registers them with Detectron2's catalogs. ``read_image`` is the image
reader of every tool (README, Python use)."""
from .datasets import register_all
from .image_io import read_image

register_all()

__all__ = ["read_image", "register_all"]
