from .kaggle_metric import KaggleMetricEvaluator, image_score, remove_overlaps
from .per_class import CellCOCOEvaluator, per_class_metrics

__all__ = ["CellCOCOEvaluator", "KaggleMetricEvaluator", "image_score", "per_class_metrics",
           "remove_overlaps"]
