"""The YOLACT mask: a linear combination of prototypes, one set of coefficients per instance."""
import torch
import torch.nn.functional as F

from ..box_windows import box_windows


def assemble_masks(proto, coefs):
    """Mask logits (n, h, w) = coefficients (n, k) x prototypes (k, h, w); the loss takes them
    as they are, inference through a sigmoid."""
    return torch.einsum("khw,nk->nhw", proto, coefs)


def as_views(x) -> list:
    """Prototypes or coefficients as a list of test views (a single tensor: one view)."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


def mean_probability(protos: list, coefs_views: list, idx):
    """Instances ``idx``' mask probabilities (n, h, w), the mean over the views."""
    probs = sum(torch.sigmoid(assemble_masks(p, c[idx])) for p, c in zip(protos, coefs_views))
    return probs / len(protos)


def mean_where(values, where):
    """Per instance, the mean of ``values`` (n, h, w) over the pixels ``where`` holds; 0 where
    it holds none."""
    return (values * where).sum(dim=(1, 2)) / where.sum(dim=(1, 2)).clamp(min=1)


def paste_masks(proto, coefs, boxes, output_hw, proto_pixel, threshold: float = 0.5,
                chunk: int = 128, maskness: bool = False):
    """Each instance's mask probabilities, sampled bilinearly (``F.grid_sample``,
    align_corners=False, as Detectron2 pastes masks) at the output pixels inside its box, as a
    bool (n, H, W) tensor.

    proto (k, h, w): prototypes of the image region only (no padding); coefs (n, k); boxes (n, 4)
    in output pixels; proto_pixel: (height, width) of a prototype pixel in output pixels.
    Test-time augmentation: proto and coefs may be lists of equal length (one entry per view,
    mapped back to the image's orientation); the mask is the mean of the views' probabilities.
    Instances go in chunks of similar box size, each sampling a (chunk, box_h, box_w) grid, so
    memory and time follow the boxes' area, never n x H x W floats.
    ``maskness``: also return each mask's mean probability over its pixels (n,), 0 when empty.
    """
    out_h, out_w = output_hw
    protos, coefs_views = as_views(proto), as_views(coefs)
    proto, coefs = protos[0], coefs_views[0]
    n = coefs.shape[0]
    masks = torch.zeros((n, out_h, out_w), dtype=torch.bool, device=coefs.device)
    mean_prob = torch.zeros(n, device=coefs.device)
    if n == 0:
        return (masks, mean_prob) if maskness else masks
    windows = box_windows(boxes, out_h, out_w)
    sizes = windows[:, 2:] - windows[:, :2]  # (w, h)
    # Output pixel centre -> grid_sample's [-1, 1] over the prototypes.
    to_grid = torch.tensor([2 / (proto_pixel[1] * proto.shape[2]),
                            2 / (proto_pixel[0] * proto.shape[1])], device=coefs.device)
    windows_l, sizes_l = windows.tolist(), sizes.tolist()
    for idx in sizes.prod(dim=1).argsort().split(chunk):
        wmax, hmax = sizes[idx].max(dim=0).values.tolist()
        if hmax == 0 or wmax == 0:
            continue
        probs = mean_probability(protos, coefs_views, idx)[:, None]
        xs = windows[idx, 0, None] + torch.arange(wmax, device=coefs.device) + 0.5
        ys = windows[idx, 1, None] + torch.arange(hmax, device=coefs.device) + 0.5
        grid = torch.stack([(xs * to_grid[0] - 1)[:, None, :].expand(-1, hmax, -1),
                            (ys * to_grid[1] - 1)[:, :, None].expand(-1, -1, wmax)], dim=-1)
        sampled = F.grid_sample(probs, grid, mode="bilinear", padding_mode="border",
                                align_corners=False)[:, 0]
        inside = sampled > threshold
        for j, i in enumerate(idx.tolist()):
            (x0, y0, _, _), (w, h) = windows_l[i], sizes_l[i]
            if h and w:
                masks[i, y0:y0 + h, x0:x0 + w] = inside[j, :h, :w]
        if maskness:  # over each instance's own window of the chunk's grid
            own = ((torch.arange(hmax, device=coefs.device) < sizes[idx, 1, None])[:, :, None]
                   & (torch.arange(wmax, device=coefs.device) < sizes[idx, 0, None])[:, None, :])
            mean_prob[idx] = mean_where(sampled, inside & own)
    return (masks, mean_prob) if maskness else masks


def box_maskness(proto, coefs, boxes, proto_pixel: float, threshold: float = 0.5,
                 chunk: int = 256):
    """Each instance's maskness read at prototype resolution, before any mask is pasted: its
    mask's mean probability over the prototype pixels inside its box (image pixels; a
    prototype pixel is ``proto_pixel`` wide) where the probability exceeds ``threshold``; 0 when
    there are none. proto and coefs as in paste_masks (lists: one entry per view)."""
    protos, coefs_views = as_views(proto), as_views(coefs)
    rows, cols = protos[0].shape[1:]
    device = coefs_views[0].device
    ys = (torch.arange(rows, device=device) + 0.5) * proto_pixel
    xs = (torch.arange(cols, device=device) + 0.5) * proto_pixel
    out = []
    for idx in torch.arange(len(boxes), device=device).split(chunk):
        probs = mean_probability(protos, coefs_views, idx)
        b = boxes[idx]
        inside = (((ys >= b[:, 1, None]) & (ys < b[:, 3, None]))[:, :, None]
                  & ((xs >= b[:, 0, None]) & (xs < b[:, 2, None]))[:, None, :])
        out.append(mean_where(probs, inside & (probs > threshold)))
    return torch.cat(out) if out else boxes.new_zeros(0)
