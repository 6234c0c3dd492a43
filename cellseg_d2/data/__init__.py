"""Datasets: importing registers them with Detectron2's catalogs."""
from .datasets import register_all

register_all()
