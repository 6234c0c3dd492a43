"""COCO segmentations (polygons, RLE, uncompressed RLE) as COCO RLEs."""
import pycocotools.mask as mask_util


def annotation_rles(annotations, height: int, width: int) -> list:
    """COCO RLEs of annotations whose segmentation is RLE, uncompressed RLE or polygons."""
    rles = []
    for a in annotations:
        seg = a["segmentation"]
        if isinstance(seg, list):
            rles.append(mask_util.merge(mask_util.frPyObjects(seg, height, width)))
        elif isinstance(seg["counts"], list):
            rles.append(mask_util.frPyObjects(seg, height, width))
        else:
            rles.append(seg)
    return rles
