"""Up-front checks of COCO files (a ground truth, a user's --data export, a results file): the
first bad entry is one error naming the file and the entry, before anything is scored,
converted or written. pycocotools checks none of this: a duplicate image id silently replaces
an image, an annotation of an unlisted image is dropped, and an RLE longer than its image is
decoded past the end of the mask's memory."""
from __future__ import annotations

import math
from numbers import Real

import numpy as np
import pycocotools.mask as mask_util


class COCOFormatError(ValueError):
    """A registered dataset's COCO file is malformed (the message names the file and entry)."""


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def compressed_counts(counts: str):
    """The run lengths of a compressed COCO RLE string (pycocotools' rleFrString), or None
    when the string is malformed."""
    try:
        c = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        return None
    if c.size == 0:
        return np.zeros(0, np.int64)
    if c.min() < 0 or c.max() > 63 or c[-1] & 0x20:
        return None
    ends = np.flatnonzero((c & 0x20) == 0)
    starts = np.r_[0, ends[:-1] + 1]
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    shift = 5 * (np.arange(c.size) - starts[group])
    if shift.max(initial=0) > 55:  # no run of an image is that long
        return None
    x = np.zeros(len(ends), np.int64)
    np.add.at(x, group, (c & 0x1F) << shift)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * (ends - starts + 1))[negative]
    # From the fourth run on, each is stored as the difference to the run two before.
    x[3::2] = np.cumsum(x[1::2])[1:]
    x[4::2] = np.cumsum(x[2::2])[1:]
    return x


def segmentation_problem(seg, height: int, width: int):
    """What is wrong with a COCO segmentation of a ``height`` x ``width`` image (a phrase),
    or None: polygons of at least 3 points, or an RLE (compressed or not) of exactly the
    image's pixels."""
    if isinstance(seg, list):
        if not seg:
            return "an empty segmentation (no polygon)"
        for p in seg:
            if not isinstance(p, list) or not all(is_number(v) for v in p):
                return "a polygon that is not a list of numbers"
            if len(p) < 6 or len(p) % 2:
                return f"a polygon of {len(p)} coordinates (3 or more x, y points needed)"
        return None
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        return "a segmentation that is neither polygons nor an RLE with 'size' and 'counts'"
    size = seg["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
        return f"an RLE size {size!r} (expected [height, width])"
    if list(size) != [height, width]:
        return f"an RLE of size {size[1]}x{size[0]} on a {width}x{height} image"
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(is_int(v) and v >= 0 for v in counts):
            return "an uncompressed RLE whose counts are not non-negative integers"
        runs = counts
    elif isinstance(counts, (str, bytes)):
        runs = compressed_counts(counts if isinstance(counts, str) else counts.decode("latin-1"))
        if runs is None or runs.min(initial=0) < 0:
            return "a malformed compressed RLE"
    else:
        return "an RLE whose counts are neither a string nor a list"
    total = int(np.sum(runs))
    if total != height * width:
        where = "past" if total > height * width else "short of"
        return f"an RLE that runs {where} its image ({total} pixels for {height * width})"
    return None


def to_rle(seg, height: int, width: int) -> dict:
    """A checked segmentation (polygons, uncompressed or compressed RLE) as a compressed RLE
    with ``counts`` as str."""
    if isinstance(seg, list):
        rle = mask_util.merge(mask_util.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_util.frPyObjects(seg, height, width)
    else:
        rle = dict(seg)
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return {"size": list(rle["size"]), "counts": rle["counts"]}


def check_images(data: dict, path: str, error, need_size: bool = True) -> dict:
    """{image id: image} of a COCO dict's ``images``: integer ids, each once; positive integer
    height and width (``need_size``); a file name listed once."""
    images, index, names = {}, {}, {}
    for i, im in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(im, dict):
            raise error(f"{where} is not an object")
        if "id" not in im:
            raise error(f"{where} has no 'id'")
        if not is_int(im["id"]):
            raise error(f"{where} has id {im['id']!r}; image ids must be integers")
        if im["id"] in images:
            raise error(f"{where} has id {im['id']}, which images[{index[im['id']]}] also has "
                        f"(merged exports? give each image its own id)")
        for key in ("height", "width") if need_size else ():
            if key not in im:
                raise error(f"{where} (id {im['id']}) has no {key!r}")
            if not is_int(im[key]) or im[key] <= 0:
                raise error(f"{where} (id {im['id']}) has {key} {im[key]!r}; a positive "
                            f"integer is needed")
        name = im.get("file_name")
        if name is not None:
            if not isinstance(name, str) or not name:
                raise error(f"{where} (id {im['id']}) has file_name {name!r}")
            if name in names:
                raise error(f"{where} (id {im['id']}) is {name}, which images[{names[name]}] "
                            f"also is (an image listed twice under two ids)")
            names[name] = i
        images[im["id"]], index[im["id"]] = im, i
    return images


def check_categories(data: dict, path: str, error) -> dict:
    """{category id: name}: integer ids, each once, each with a non-empty name."""
    cats = {}
    for i, c in enumerate(data["categories"]):
        where = f"{path}: categories[{i}]"
        if not isinstance(c, dict) or not is_int(c.get("id")):
            raise error(f"{where} has no integer 'id'")
        if c["id"] in cats:
            raise error(f"{where} has id {c['id']}, which another category also has")
        if not isinstance(c.get("name"), str) or not c["name"].strip():
            raise error(f"{where} (id {c['id']}) has no name")
        cats[c["id"]] = c["name"]
    return cats


def check_annotations(data: dict, path: str, error, sizes: dict, cats: dict,
                      need_bbox: bool = False) -> None:
    """Every annotation names a listed image and category, and its segmentation fits its
    image (``sizes``: {image id: (height, width)}); ids, where given, are unique integers."""
    ids = set()
    for k, a in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}]"
        if not isinstance(a, dict):
            raise error(f"{where} is not an object")
        if "id" in a:
            if not is_int(a["id"]) or a["id"] in ids:
                raise error(f"{where} has id {a['id']!r}, not an integer or not unique")
            ids.add(a["id"])
            where += f" (id {a['id']})"
        if a.get("image_id") not in sizes or not is_int(a.get("image_id")):
            raise error(f"{where} has image_id {a.get('image_id')!r}, not an image of the file")
        if a.get("category_id") not in cats or not is_int(a.get("category_id")):
            raise error(f"{where} has category_id {a.get('category_id')!r}, not a category of "
                        f"the file ({sorted(cats)})")
        if "segmentation" not in a:
            raise error(f"{where} has no 'segmentation' (instance masks are needed)")
        problem = segmentation_problem(a["segmentation"], *sizes[a["image_id"]])
        if problem:
            raise error(f"{where} has {problem}")
        if a.get("iscrowd", 0) not in (0, 1):
            raise error(f"{where} has iscrowd {a['iscrowd']!r} (0 or 1)")
        if need_bbox or "bbox" in a:
            box = a.get("bbox")
            if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
                raise error(f"{where} has bbox {box!r} (4 numbers x, y, width, height needed)")
