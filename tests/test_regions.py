"""Images read by region (data.regions): every region, scaled with the whole image's
intensities, equals that region of read_image's whole image, lazily read TIFFs included."""
import cv2
import numpy as np
import pytest
import tifffile

from cellseg_d2.data.image_io import read_image
from cellseg_d2.data.regions import RegionReader


def grey16(shape=(300, 500), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(20000, 3000, shape)).clip(0, 65535).astype(np.uint16)


def write_ome_zarr_image(path, image, axes):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    root = zarr.group(store=parse_url(str(path), mode="w").store)
    write_image(image, root, axes=axes, storage_options={"chunks": (1,) * (image.ndim - 2) +
                                                         (128, 128)})


@pytest.mark.parametrize("kind", ["tiled16", "strips16", "rgb16", "rgba16", "ome16", "float",
                                  "png8", "two_pages", "zarr16", "zarr_rgb"])
def test_regions_equal_the_whole_image(tmp_path, kind):
    path = tmp_path / ("x.png" if kind == "png8" else "x.ome.tif" if kind == "ome16" else
                       "x.zarr" if kind.startswith("zarr") else "x.tif")
    image = grey16()
    if kind == "tiled16":
        tifffile.imwrite(path, image, tile=(64, 64), compression="zlib")
    elif kind == "strips16":
        tifffile.imwrite(path, image, rowsperstrip=7)
    elif kind == "rgb16":
        tifffile.imwrite(path, np.stack([image, image // 2, image // 3], -1), photometric="rgb",
                         tile=(64, 64))
    elif kind == "rgba16":
        tifffile.imwrite(path, np.stack([image, image // 2, image // 3, image * 0 + 7], -1),
                         photometric="rgb", extrasamples=["unassalpha"])
    elif kind == "ome16":
        tifffile.imwrite(path, image, ome=True, tile=(128, 128))
    elif kind == "float":
        f = image.astype(np.float32)
        f[5, 5] = np.nan
        tifffile.imwrite(path, f)
    elif kind == "png8":
        cv2.imwrite(str(path), (image // 256).astype(np.uint8))
    elif kind == "zarr16":
        write_ome_zarr_image(path, image[None, None], "tcyx")
    elif kind == "zarr_rgb":
        write_ome_zarr_image(path, np.stack([image, image // 2, image // 3]), "cyx")
    else:
        tifffile.imwrite(path, np.stack([np.zeros_like(image), image]))
    whole = read_image(str(path))
    reader = RegionReader(str(path))
    assert reader.lazy == (kind in ("tiled16", "strips16", "rgb16", "rgba16", "ome16", "float",
                                    "zarr16"))
    if kind == "zarr_rgb":  # RGB planes become BGR, as for a TIFF
        assert whole[0, 0, 0] < whole[0, 0, 2]  # blue (image // 3) before red (image)
    scaling = reader.scaling()
    for y0, y1, x0, x1 in ((0, 128, 0, 128), (100, 300, 350, 500), (17, 18, 3, 499)):
        np.testing.assert_array_equal(reader.bgr_region(y0, y1, x0, x1, scaling),
                                      whole[y0:y1, x0:x1], err_msg=f"{kind} {(y0, y1, x0, x1)}")
    reader.close()
