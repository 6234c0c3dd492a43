"""YOLACT losses: OHEM softmax classification, smooth-L1 boxes, cropped prototype-mask BCE and
the semantic-segmentation auxiliary loss."""
import torch
import torch.nn.functional as F

from ..box_windows import grown_boxes
from .masks import assemble_masks


def ohem_class_loss(logits, labels, negpos_ratio: int, agnostic: bool = False):
    """Softmax cross entropy over positives and the hardest ``negpos_ratio`` x positives
    background anchors of each image; summed (the caller normalises by the positive count).

    logits (N, R, C+1), background is the last class; labels (N, R): class index for
    positives, C for background, -1 ignored. ``agnostic``: a positive's loss is -log of its
    foreground probability (the classes' sum), whichever class holds it.
    """
    num_classes = logits.shape[-1] - 1
    pos = (labels >= 0) & (labels < num_classes)
    neg_candidates = labels == num_classes
    with torch.no_grad():
        bg_loss = torch.logsumexp(logits, dim=-1) - logits[..., num_classes]
        bg_loss = torch.where(neg_candidates, bg_loss, torch.full_like(bg_loss, -1.0))
        num_neg = (pos.sum(dim=1, keepdim=True) * negpos_ratio).clamp(max=logits.shape[1] - 1)
        order = bg_loss.argsort(dim=1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        neg = neg_candidates & (rank < num_neg)
    keep = pos | neg
    if not keep.any():
        return logits.sum() * 0.0
    if not agnostic:
        return F.cross_entropy(logits[keep], labels[keep], reduction="sum")
    log_p = F.log_softmax(logits[keep], dim=-1)
    log_fg = torch.logsumexp(log_p[:, :num_classes], dim=-1)
    return -torch.where(pos[keep], log_fg, log_p[:, num_classes]).sum()


def box_loss(pred_deltas, target_deltas, beta: float):
    return F.smooth_l1_loss(pred_deltas, target_deltas, beta=beta, reduction="sum")


def box_region(boxes, height: int, width: int):
    """(n, h, w) bool: pixels whose centres lie inside each box (boxes in pixel units)."""
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    inside_y = (ys[None] >= y0) & (ys[None] < y1)
    inside_x = (xs[None] >= x0) & (xs[None] < x1)
    return inside_y[:, :, None] & inside_x[:, None, :]


def mask_loss(proto, coefs, gt_masks, gt_boxes, stride: float, margin: float = 1.0,
              grow: float = 0.0, dice: float = 0.0):
    """Per instance: BCE between sigmoid(proto . coef) and its ground-truth mask, summed over
    the ground-truth box grown by ``grow`` of its size per side and then widened by ``margin``
    prototype pixels, and divided by that region's area, so small and large cells weigh alike.

    The margin trains the prototype pixels just outside the box towards the (near zero)
    coverage there: inference upsamples bilinearly, so a box's edge pixels blend in their
    outside neighbours, and for a 15 px cell at stride 4 the edge is most of the mask.

    proto (k, h, w); coefs (n, k); gt_masks (n, h, w) coverage fractions at prototype
    resolution; gt_boxes (n, 4) in input pixels. Returns the sum over instances.

    ``grow`` trains the window that inference reads past a predicted box (MASK_BOX_GROW)
    towards this cell's mask and away from its neighbours'.

    ``dice`` adds that weight x the instance's Dice loss over the same region (1 - 2|p g| /
    (|p|^2 + |g|^2), SOLO's form): BCE is a per-pixel mean, so a thin process that covers a few
    percent of a sprawling cell's box costs a few percent of it; Dice scores the overlap itself.
    """
    logits = assemble_masks(proto, coefs)
    boxes = grown_boxes(gt_boxes, grow) / stride + torch.tensor([-margin, -margin, margin, margin],
                                             dtype=gt_boxes.dtype, device=gt_boxes.device)
    region = box_region(boxes, *proto.shape[1:]).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, gt_masks, reduction="none") * region
    area = region.sum(dim=(1, 2)).clamp(min=1.0)
    loss = bce.sum(dim=(1, 2)) / area
    if dice:
        p = torch.sigmoid(logits) * region
        g = gt_masks * region
        overlap = 2.0 * (p * g).sum(dim=(1, 2))
        loss = loss + dice * (1.0 - (overlap + 1.0) / ((p * p + g * g).sum(dim=(1, 2)) + 1.0))
    return loss.sum()


def semantic_loss(seg_logits, targets):
    """BCE with logits, summed over classes and pixels, divided by pixels; summed over images.
    seg_logits / targets (N, C, h, w)."""
    h, w = seg_logits.shape[-2:]
    return F.binary_cross_entropy_with_logits(seg_logits, targets, reduction="sum") / (h * w)
