from .kaggle_metric import KaggleMetricEvaluator
from .per_class import CellCOCOEvaluator, per_class_metrics

__all__ = ["CellCOCOEvaluator", "KaggleMetricEvaluator", "per_class_metrics"]
