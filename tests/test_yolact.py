import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances, pairwise_iou

import cellseg_d2  # noqa: F401
from cellseg_d2 import add_yolact_config
from cellseg_d2.box_windows import box_windows, grown_boxes
from cellseg_d2.config import SetupError, load_cfg
from cellseg_d2.modeling import yolact as yolact_module
from cellseg_d2.modeling.inference import fast_nms, semantic_type
from cellseg_d2.modeling.loss import mask_loss, ohem_class_loss
from cellseg_d2.modeling.masks import box_maskness, paste_masks
from cellseg_d2.modeling.targets import TargetBuilder, coverage, match_anchors, parts_of_cells
from cellseg_d2.modeling.test_time_augmentation import (
    YolactWithTTA,
    one_type_nms,
    vote_type,
    with_test_time_policy,
)


def tiny_cfg(**overrides):
    cfg = get_cfg()
    add_yolact_config(cfg)
    cfg.merge_from_file("configs/synthetic_R18_cpu.yaml")
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.YOLACT.PROTONET_CHANNELS = 32
    cfg.MODEL.YOLACT.NUM_PROTOTYPES = 8
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.FPN.NORM = ""
    cfg.MODEL.YOLACT.HEAD_NORM = ""
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    return cfg


def make_input(h, w, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 255, (3, h, w), generator=g).float()
    inst = Instances((h, w))
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 24.0, h - 24.0])
    boxes = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 14], dim=1).round()
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[i, y0:y1, x0:x1] = True
        image[:, y0:y1, x0:x1] = 40.0  # dark cells so the batch is learnable
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(0, 3, (n,), generator=g)
    inst.gt_masks = BitMasks(masks)
    return {"image": image, "instances": inst}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_train_mode_losses_with_an_empty_image(model):
    model.train()
    losses = model([make_input(96, 128, 6), make_input(96, 128, 0, seed=1)])
    assert set(losses) == {"loss_cls", "loss_box", "loss_mask", "loss_semseg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.coef.weight.grad.abs().sum() > 0
    assert model.protonet.out.weight.grad.abs().sum() > 0
    model.zero_grad()
    only_empty = model([make_input(96, 128, 0, seed=2)])
    assert all(torch.isfinite(v) for v in only_empty.values())
    assert only_empty["loss_mask"] == 0 and only_empty["loss_box"] == 0


def test_eval_mode_outputs_at_original_size(model):
    model.eval()
    model.score_thresh = 0.0
    with torch.no_grad():
        out = model([{"image": make_input(96, 128, 0)["image"], "height": 150, "width": 200}])
    model.score_thresh = 0.05
    inst = out[0]["instances"]
    assert inst.image_size == (150, 200)
    n = len(inst)
    assert 0 < n <= 1000
    assert inst.pred_masks.shape == (n, 150, 200) and inst.pred_masks.dtype == torch.bool
    assert inst.pred_boxes.tensor.shape == (n, 4) and inst.scores.shape == (n,)
    assert (inst.scores[:-1] >= inst.scores[1:]).all()
    assert inst.pred_classes.max() < 3
    assert (inst.pred_boxes.tensor[:, 2] <= 200).all() and (inst.pred_boxes.tensor[:, 3] <= 150).all()


def test_up_to_1000_detections_per_image():
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"MODEL.YOLACT.SCORE_THRESH_TEST": 0.0, "MODEL.YOLACT.NMS_THRESH_TEST": 0.99})
    model = build_model(cfg).eval()
    with torch.no_grad():
        inst = model([{"image": torch.rand(3, 256, 352) * 255}])[0]["instances"]
    assert len(inst) == 1000


def tta_model(**overrides):
    """A plain tiny Yolact with spread-out scores, wrapped as the config's test-time policy
    asks (with_test_time_policy, as the trainer and the predictor build it)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"MODEL.YOLACT.SCORE_THRESH_TEST": 0.0, **overrides})
    model = build_model(cfg).eval()
    with torch.no_grad():  # spread the scores so that the top detections are well ordered
        model.head.cls.weight.normal_(std=0.3)
        model.head.box.weight.normal_(std=0.05)
        model.head.coef.weight.normal_(std=1.0)
    return with_test_time_policy(cfg, model)


def flip_tta_model(flips):
    return tta_model(**{"MODEL.YOLACT.TEST_FLIPS": flips})


def test_flip_tta_is_flip_equivariant():
    """With horizontal and vertical flips averaged, the detections of a mirrored image are the
    mirrored detections: same scores and classes, mirrored boxes and masks. Fails if a view's
    maps, box deltas or prototypes are not mapped back."""
    model = flip_tta_model("['horizontal', 'vertical']")
    assert isinstance(model, YolactWithTTA) and len(model.views) == 4 and not model.training
    image = make_input(128, 256, 10)["image"]  # a multiple of P7's stride: no padding
    with torch.no_grad():
        a = model([{"image": image}])[0]["instances"][:50]
        b = model([{"image": image.flip(2)}])[0]["instances"][:50]
        c = model.model([{"image": image}])[0]["instances"][:50]  # the plain model
    assert torch.allclose(a.scores, b.scores, atol=1e-5)
    assert (a.pred_classes == b.pred_classes).all()
    mirrored = b.pred_boxes.tensor[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + \
        torch.tensor([256, 0, 256, 0])
    assert torch.allclose(a.pred_boxes.tensor, mirrored, atol=1e-3)
    b_masks = b.pred_masks.flip(2)
    iou = (a.pred_masks & b_masks).sum((1, 2)) / (a.pred_masks | b_masks).sum((1, 2)).clamp(min=1)
    assert iou.min() > 0.99
    # and the averaged views are not simply the plain pass
    assert not torch.allclose(a.scores, c.scores, atol=1e-3)


def test_flip_tta_pads_with_the_image_mean():
    """The views are padded to P7's stride (up to 127 px, at the top or left once flipped):
    with a constant border a uniform image would show the network an edge like a cell's."""
    model = flip_tta_model("['horizontal']")
    seen = []
    backbone_forward = model.model.backbone.forward
    model.model.backbone.forward = lambda x: seen.append(x.clone()) or backbone_forward(x)
    with torch.no_grad():
        model([{"image": torch.full((3, 40, 72), 90.0)}])
    assert [tuple(x.shape[-2:]) for x in seen] == [(128, 128)] * 2
    for x in seen:
        assert torch.allclose(x, x[:, :, :1, :1].expand_as(x))


def test_flip_tta_rejects_unknown_flips(tmp_path):
    with pytest.raises(ValueError, match="TEST_FLIPS"):
        flip_tta_model("['diagonal']")
    with pytest.raises(SetupError, match="TEST_FLIPS: unknown flip"):  # before any training
        load_cfg("configs/synthetic_R18_cpu.yaml", ["MODEL.YOLACT.TEST_FLIPS", "['diagonal']"])


def test_no_test_time_policy_leaves_the_model_as_it_is():
    cfg = tiny_cfg()
    model = build_model(cfg)
    assert with_test_time_policy(cfg, model) is model
    wrapped = with_test_time_policy(tiny_cfg(**{"MODEL.YOLACT.TEST_ONE_TYPE_PER_IMAGE": True}),
                                    model)
    assert wrapped.model is model and wrapped.training  # the model's mode


@pytest.mark.parametrize("maskness", [False, True])
def test_rescale_by_type_runs_the_voted_types_scale(monkeypatch, maskness):
    """An image whose detections vote for a type with factor 2 is segmented again at 2x the
    test scale (what the plain model gives for the 2x image), output at the input's size, and
    its first pass pastes no masks; one that votes for a factor-1 type keeps its first pass
    (also when maskness rescores it after the vote)."""
    pasted = []
    paste = yolact_module.paste_masks
    monkeypatch.setattr(yolact_module, "paste_masks",
                        lambda *args, **kw: pasted.append(len(args[2])) or paste(*args, **kw))
    plain = tta_model()
    plain.maskness = maskness
    image = make_input(64, 96, 6)["image"]
    with torch.no_grad():
        first = plain([{"image": image}])[0]["instances"]
        voted = int(torch.bincount(first.pred_classes[first.scores > 0.3], minlength=3).argmax())
        big = F.interpolate(image[None], scale_factor=2.0, mode="bilinear")[0]
        expected = plain([{"image": big, "height": 64, "width": 96}])[0]["instances"]
        for factor, want in ((2.0, expected), (1.0, first)):
            factors = [1.0, 1.0, 1.0]
            factors[voted] = factor
            cfg = tiny_cfg(**{"MODEL.YOLACT.TEST_RESCALE_BY_TYPE": str(factors),
                              "MODEL.YOLACT.SCORE_THRESH_TEST": 0.0,
                              "MODEL.YOLACT.TEST_TYPE_VOTE_THRESH": 0.3})
            model = with_test_time_policy(cfg, plain)
            pasted.clear()
            got = model([{"image": image}])[0]["instances"]
            assert pasted == [len(want)]  # one image's masks, pasted once
            assert got.image_size == (64, 96) and got.pred_masks.shape[-2:] == (64, 96)
            assert len(got) == len(want) and torch.allclose(got.scores, want.scores)
            as_mapped = model([{"image": image.to(torch.uint8)}])[0]["instances"]  # the mapper's
            assert as_mapped.pred_masks.shape[-2:] == (64, 96)
    assert len(expected) != len(first) or not torch.allclose(expected.scores, first.scores)
    with pytest.raises(ValueError, match="TEST_RESCALE_BY_TYPE"):
        with_test_time_policy(tiny_cfg(**{"MODEL.YOLACT.TEST_RESCALE_BY_TYPE": "[2.0]"}), plain)


def test_score_thresholds_by_class_remap_each_class_onto_half():
    """TEST_SCORE_THRESH_BY_CLASS: each class's threshold lands on 0.5, the order within a
    class is kept (its AP unchanged), detections and masks are those of the plain model."""
    from cellseg_d2.modeling.test_time_augmentation import calibrated_scores

    thresholds = [0.3, 0.5, 0.7]
    scores = torch.tensor([0.3, 0.5, 0.7, 0.2, 0.9, 0.05])
    classes = torch.tensor([0, 1, 2, 0, 2, 0])
    got = calibrated_scores(scores, classes, thresholds)
    assert torch.allclose(got[:3], torch.full((3,), 0.5))
    assert got[3] < 0.5 and got[4] > 0.5 and got[3] > scores[3] and got[4] < scores[4]
    plain = tta_model()  # no test-time policy asked: the Yolact itself
    image = make_input(64, 96, 6)["image"]
    with torch.no_grad():
        want = plain([{"image": image}])[0]["instances"]
        model = with_test_time_policy(tiny_cfg(**{
            "MODEL.YOLACT.SCORE_THRESH_TEST": 0.0,
            "MODEL.YOLACT.TEST_SCORE_THRESH_BY_CLASS": str(thresholds)}), plain)
        got = model([{"image": image}])[0]["instances"]
    assert len(got) == len(want) > 0 and torch.equal(got.pred_masks, want.pred_masks)
    assert torch.allclose(got.scores, calibrated_scores(want.scores, want.pred_classes,
                                                        thresholds))
    for c in range(3):  # within a class, the same order
        a, b = want.scores[want.pred_classes == c], got.scores[got.pred_classes == c]
        assert torch.equal(a.argsort(), b.argsort())
    with pytest.raises(ValueError, match="TEST_SCORE_THRESH_BY_CLASS"):
        with_test_time_policy(tiny_cfg(**{"MODEL.YOLACT.TEST_SCORE_THRESH_BY_CLASS":
                                          "[0.3, 1.0, 0.5]"}), plain)


def test_one_type_per_image_gives_every_detection_the_voted_type():
    """Per class, Fast NMS keeps a cell twice when the classifier splits it between two types
    (A: cort, B: astro, same place); with TEST_ONE_TYPE_PER_IMAGE the image's type (astro:
    B and C vote for it above 0.5, A for cort) goes to every detection, each scored by its
    foreground probability, and the duplicate goes: A (fg 0.95) suppresses B (fg 0.9)."""
    probs = torch.tensor([[0.0, 0.30, 0.65, 0.05],    # A: cort (class 2); background last
                          [0.0, 0.55, 0.35, 0.10],    # B: astro, IoU 0.68 with A
                          [0.0, 0.70, 0.00, 0.30],    # C: astro, elsewhere
                          [0.0, 0.01, 0.01, 0.98]])   # background
    anchors = Boxes(torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [40, 40, 50, 50],
                                  [20, 20, 30, 30]]))
    args = (anchors, probs.clamp(min=1e-9).log(), torch.zeros(4, 4), [torch.zeros(4, 8)],
            [torch.zeros(8, 16, 16)], (64, 64), (64, 64))
    model = build_model(tiny_cfg()).eval()
    for one_type in (False, True):
        nms = one_type_nms(model, 0.5) if one_type else None
        got = model.inference_single_image(*args, nms=nms)
        assert got.pred_masks.shape == (len(got), 64, 64)
        if not one_type:
            assert got.pred_classes.tolist() == [1, 2, 1]
            assert torch.allclose(got.scores, torch.tensor([0.70, 0.65, 0.55]))
        else:
            assert got.pred_classes.tolist() == [1, 1]
            assert torch.allclose(got.scores, torch.tensor([0.95, 0.70]))
            assert torch.equal(got.pred_boxes.tensor, anchors.tensor[[0, 2]])



def test_one_type_vote_weighs_maskness():
    """With TEST_MASKNESS the vote counts scores x maskness (box_maskness of each detection's
    coefficients): B and C (astro) outvote A (cort) by their class scores, but their masks are
    barely above the threshold (probability 0.55), A's crisp (0.99); only A stays above the
    vote threshold, so the image is cort. The kept detections (A, C) are then rescored by the
    pasted masks' maskness. Where no detection passes that way, class scores vote."""
    probs = torch.tensor([[0.0, 0.30, 0.65, 0.05],    # A: cort
                          [0.0, 0.55, 0.35, 0.10],    # B: astro, IoU 0.68 with A
                          [0.0, 0.70, 0.00, 0.30],    # C: astro, elsewhere
                          [0.0, 0.01, 0.01, 0.98]])   # background
    anchors = Boxes(torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [40, 40, 50, 50],
                                  [20, 20, 30, 30]]))
    coefs = torch.zeros(4, 8)
    coefs[:, 0] = torch.tensor([5.0, 0.2, 0.2, 0.0])  # prototype 0 is 1 everywhere
    proto = torch.zeros(8, 16, 16)
    proto[0] = 1
    args = (anchors, probs.clamp(min=1e-9).log(), torch.zeros(4, 4), [coefs], [proto], (64, 64),
            (64, 64))
    model = build_model(tiny_cfg()).eval()
    nms = one_type_nms(model, 0.5)
    assert model.inference_single_image(*args, nms=nms).pred_classes.tolist() == [1, 1]
    model.maskness = True
    got = model.inference_single_image(*args, nms=nms)
    assert got.pred_classes.tolist() == [2, 2]
    assert torch.equal(got.pred_boxes.tensor, anchors.tensor[[0, 2]])
    mask_prob = torch.sigmoid(torch.tensor([5.0, 0.2]))
    assert torch.allclose(got.scores, torch.tensor([0.95, 0.70]) * mask_prob)
    coefs[0, 0] = 0.2  # no mask crisp enough for any detection to pass: class scores vote
    assert model.inference_single_image(*args, nms=nms).pred_classes.tolist() == [1, 1]



def test_semantic_type_is_the_best_mean_over_cell_pixels():
    probs = torch.zeros(3, 10, 12)
    probs[:, :, 10:] = 0.3  # no class above 0.5: not a cell pixel, not counted
    probs[1, :2, :10] = 0.9   # 20 cell pixels sure of class 1
    probs[2, 2:, :10] = 0.6   # 80 of class 2, less sure
    probs[1, 2:, :10] = 0.1
    assert semantic_type(probs) == 2  # means: class 1 (18 + 8) / 100, class 2 48 / 100
    probs[1, 2:, :10] = 0.45
    assert semantic_type(probs) == 1  # class 1 (18 + 36) / 100
    assert semantic_type(torch.full((3, 4, 4), 0.5)) is None  # no pixel above 0.5


@pytest.mark.parametrize("flips", ["[]", "['horizontal']"])
def test_type_vote_from_the_semantic_head(flips):
    """TEST_TYPE_VOTE "semantic": every detection takes the type the semantic head gives the
    image (here forced through its bias), with the detections (boxes, scores) of the vote by
    detections; where no pixel is a cell by the head, the detections vote."""
    one_type = {"MODEL.YOLACT.TEST_ONE_TYPE_PER_IMAGE": True, "MODEL.YOLACT.TEST_FLIPS": flips,
                "MODEL.YOLACT.TEST_TYPE_VOTE_THRESH": 0.3}
    by_detections = tta_model(**one_type)
    by_semantic = tta_model(**one_type, **{"MODEL.YOLACT.TEST_TYPE_VOTE": "semantic"})
    head = by_semantic.model.semantic_head
    image = [{"image": make_input(64, 96, 6)["image"]}]
    with torch.no_grad():
        want = by_detections(image)[0]["instances"]
        assert len(want) > 0 and len(set(want.pred_classes.tolist())) == 1
        head.weight.zero_()
        for k in range(3):
            head.bias.fill_(-5.0)
            head.bias[k] = 5.0
            got = by_semantic(image)[0]["instances"]
            assert got.pred_classes.tolist() == [k] * len(want)
            assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
            assert torch.allclose(got.scores, want.scores)
        head.bias.fill_(-5.0)  # no cell pixels: the detections' vote
        got = by_semantic(image)[0]["instances"]
        assert torch.equal(got.pred_classes, want.pred_classes)
    with pytest.raises(ValueError, match="TEST_TYPE_VOTE"):
        tta_model(**{"MODEL.YOLACT.TEST_TYPE_VOTE": "semantic"})  # without one type per image
    with pytest.raises(ValueError, match="TEST_TYPE_VOTE"):
        tta_model(**one_type, **{"MODEL.YOLACT.TEST_TYPE_VOTE": "masks"})


def test_agnostic_detection_trains_cell_or_background_and_types_by_the_semantic_head():
    """AGNOSTIC_DETECTION: a positive's class loss is -log of its foreground probability (as a
    two-class softmax of the classes' logsumexp against background; how its probability is
    split between classes does not matter); the image's type comes from the semantic head,
    its highest mean over the image where no pixel is a cell by it."""
    torch.manual_seed(0)
    logits = torch.randn(2, 50, 4)
    labels = torch.full((2, 50), 3)
    labels[0, :5] = torch.tensor([0, 1, 2, 0, 1])
    labels[1, :3] = 2
    labels[1, 10] = -1
    two = torch.stack([torch.logsumexp(logits[..., :3], -1), logits[..., 3]], -1)
    two_labels = torch.where(labels == 3, 1, labels.clamp(max=0))
    agnostic = ohem_class_loss(logits, labels, 3, agnostic=True)
    assert torch.allclose(agnostic, ohem_class_loss(two, two_labels, 3))
    assert not torch.allclose(agnostic, ohem_class_loss(logits, labels, 3))
    moved = (labels >= 0) & (labels < 3)  # each positive's class changed
    relabelled = torch.where(moved, (labels + 1) % 3, labels)
    assert torch.allclose(ohem_class_loss(logits, relabelled, 3, agnostic=True), agnostic)

    with pytest.raises(ValueError, match="TEST_TYPE_VOTE"):
        build_model(tiny_cfg(**{"MODEL.YOLACT.AGNOSTIC_DETECTION": True}))
    settings = {"MODEL.YOLACT.TEST_ONE_TYPE_PER_IMAGE": True,
                "MODEL.YOLACT.TEST_TYPE_VOTE": "semantic"}
    model = tta_model(**settings, **{"MODEL.YOLACT.AGNOSTIC_DETECTION": True})
    by_vote = tta_model(**settings)
    image = [{"image": make_input(64, 96, 6)["image"]}]
    with torch.no_grad():
        for m in (model, by_vote):  # no cell pixel; class 2 the likeliest
            m.model.semantic_head.weight.zero_()
            m.model.semantic_head.bias.copy_(torch.tensor([-5.0, -5.0, -3.0]))
        got = model(image)[0]["instances"]
        voted = by_vote(image)[0]["instances"]
    assert len(got) > 0 and got.pred_classes.tolist() == [2] * len(got)
    assert voted.pred_classes.tolist() == [1] * len(voted)  # without it, the detections' vote
    model.model.train()
    losses = model.model([make_input(96, 128, 5, seed=3)])
    assert all(torch.isfinite(v) for v in losses.values())


def test_box_maskness_equals_a_dense_reference():
    """Mean probability over the prototype pixels whose centres lie in the box and whose
    probability exceeds the threshold; two views' probabilities averaged; 0 when none."""
    g = torch.Generator().manual_seed(1)
    protos = [torch.randn(8, 20, 30, generator=g) for _ in range(2)]
    coefs = [torch.randn(25, 8, generator=g) for _ in range(2)]
    xy = torch.rand(25, 2, generator=g) * torch.tensor([100.0, 70.0])
    boxes = torch.cat([xy, xy + 2 + torch.rand(25, 2, generator=g) * 30], 1)
    got = box_maskness(protos, coefs, boxes, proto_pixel=4.0, threshold=0.5, chunk=7)
    probs = sum(torch.sigmoid(torch.einsum("khw,nk->nhw", p, c)) for p, c in zip(protos, coefs))
    probs = probs / 2
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        values = [float(probs[i, r, c]) for r in range(20) for c in range(30)
                  if x0 <= (c + 0.5) * 4 < x1 and y0 <= (r + 0.5) * 4 < y1
                  and probs[i, r, c] > 0.5]
        assert got[i].item() == pytest.approx(np.mean(values) if values else 0.0, abs=1e-5)
    assert (got > 0.5).sum() > 10
    assert box_maskness(protos[0], torch.zeros(1, 8), boxes[:1], 4.0).tolist() == [0.0]
    assert box_maskness(protos[0], torch.zeros(0, 8), boxes[:0], 4.0).shape == (0,)


def brute_force_match(gt, anchors, pos, neg):
    """YOLACT matching from the full IoU matrix (the reference for the grid search)."""
    iou = pairwise_iou(gt, anchors)
    best_iou, best_gt = iou.max(0)
    label = torch.full((len(anchors),), -1)
    label[best_iou >= pos] = 1
    label[best_iou < neg] = 0
    for g in range(len(gt)):  # forced matches in ground-truth order: the later one wins
        a = int(iou[g].argmax())
        best_gt[a] = g
        label[a] = 1
    return best_gt, label


@pytest.mark.parametrize("seed", range(3))
def test_grid_matching_equals_dense_on_real_anchor_layout(seed):
    """The fast path (candidate pairs from the anchor grid) must give the dense result on the
    anchors a Yolact model really builds, with ~800 cells, duplicates and boxes off the edge."""
    model = build_model(tiny_cfg())
    strides = model.anchor_generator.strides
    feats = [torch.zeros(1, 1, -(-544 // s), -(-704 // s)) for s in strides]
    anchors = Boxes.cat(model.anchor_generator(feats))
    grid = [(f.shape[-2], f.shape[-1], s) for f, s in zip(feats, strides)]
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(800, 2, generator=g) * torch.tensor([724.0, 540.0]) - 10
    gt = Boxes(torch.cat([xy, xy + 3 + torch.rand(800, 2, generator=g) * 80], 1))
    gt.tensor[7] = gt.tensor[3]
    expected_idx, expected_label = brute_force_match(gt, anchors, 0.5, 0.4)
    idx, label = match_anchors(gt, anchors, 0.5, 0.4, grid)
    assert (label == 1).sum() > 800
    assert torch.equal(label, expected_label)
    assert torch.equal(idx[label != 0], expected_idx[label != 0])
    empty_idx, empty_label = match_anchors(Boxes(torch.zeros(0, 4)), anchors, 0.5, 0.4, grid)
    assert (empty_label == 0).all()


def test_parts_of_cells_are_small_anchors_centred_on_a_mask():
    """PART_IOU: an anchor is a part of a cell when its centre pixel is on that cell's mask, it
    is no larger than the cell's box and its IoU with it is below the limit; checked against a
    per-anchor loop over a large cell with a hole, a small one and anchors off the image."""
    masks = torch.zeros(2, 120, 160, dtype=torch.bool)
    masks[0, 10:110, 20:120] = True
    masks[0, 50:70, 60:80] = False  # a hole: anchors centred there are not on the cell
    masks[1, 30:50, 130:150] = True
    inst = Instances((120, 160))
    inst.gt_masks = BitMasks(masks)
    inst.gt_boxes = Boxes(torch.tensor([[20, 10, 120, 110], [130, 30, 150, 50]], dtype=torch.float32))
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3000, 2, generator=g) * torch.tensor([200.0, 160.0]) - 20
    anchors = Boxes(torch.cat([xy, xy + 4 + torch.rand(3000, 2, generator=g) * 90], 1))
    part = parts_of_cells(inst, anchors, 0.2)
    ious = pairwise_iou(inst.gt_boxes, anchors)
    expected = torch.zeros(3000, dtype=torch.bool)
    for r, (x0, y0, x1, y1) in enumerate(anchors.tensor.tolist()):
        cx, cy = math.floor((x0 + x1) / 2), math.floor((y0 + y1) / 2)
        if 0 <= cx < 160 and 0 <= cy < 120:
            area = (x1 - x0) * (y1 - y0)
            expected[r] = any(masks[k, cy, cx] and ious[k, r] < 0.2 and
                              area <= inst.gt_boxes.area()[k] for k in range(2))
    assert 50 < int(part.sum()) < 2950
    # anchors centred on the small cell, larger than it: background, not parts of it
    centres = anchors.get_centers().floor().long()
    on_small = torch.tensor([bool(0 <= x < 160 and 0 <= y < 120 and masks[1, y, x])
                             for x, y in centres.tolist()])
    around = on_small & (anchors.area() > 400) & (ious[1] < 0.2)
    assert around.sum() > 10 and not part[around].any()
    assert torch.equal(part, expected)


def test_part_iou_turns_background_parts_into_ignored_anchors():
    """With PART_IOU, background anchors on a cell become ignored; positives stay positive and
    anchors off every cell stay background. PART_IOU 0 gives the plain matching."""
    masks = torch.zeros(1, 128, 128, dtype=torch.bool)
    masks[0, 8:120, 8:120] = True
    inst = Instances((128, 128))
    inst.gt_masks = BitMasks(masks)
    inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 120.0, 120.0]]))
    inst.gt_classes = torch.tensor([1])
    model = build_model(tiny_cfg())
    strides = model.anchor_generator.strides
    feats = [torch.zeros(1, 1, -(-128 // s), -(-128 // s)) for s in strides]
    anchors = Boxes.cat(model.anchor_generator(feats))
    grid = [(f.shape[-2], f.shape[-1], s) for f, s in zip(feats, strides)]
    args = (3, model.box2box_transform, 0.5, 0.4, 100, 4, 8)
    plain = TargetBuilder(*args)([inst], anchors, grid, (128, 128)).classes[0]
    parts = TargetBuilder(*args, part_iou=0.2)([inst], anchors, grid, (128, 128)).classes[0]
    on_part = parts_of_cells(inst, anchors, 0.2)
    assert torch.equal(plain == 1, parts == 1) and (plain == 1).any()
    changed = plain != parts
    assert changed.any() and torch.equal(changed, on_part & (plain == 3))
    assert (parts[changed] == -1).all()


def test_gt_mask_targets_are_coverage_fractions():
    """Training targets at prototype / semantic stride equal area downsampling of the masks
    (soft edges), zero-padded to the batch size, including cells cut by the image edge."""
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(6, 517, 701, dtype=torch.bool)
    boxes = []
    for i, (x, y, size) in enumerate([(3, 5, 20), (100, 200, 35), (680, 500, 40),
                                      (0, 0, 9), (350, 90, 60), (690, 10, 30)]):
        patch = torch.rand(size, size, generator=g) > 0.3
        region = masks[i, y:y + size, x:x + size]
        region |= patch[:region.shape[0], :region.shape[1]]
        ys, xs = masks[i].nonzero(as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    inst = Instances((517, 701))
    inst.gt_masks = BitMasks(masks)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    for stride in (4, 8):
        targets = coverage(inst, (544, 704), stride)
        expected = F.interpolate(F.pad(masks.float(), (0, 3, 0, 27))[None],
                                 scale_factor=1 / stride, mode="area")[0]
        assert targets.shape == (6, 544 // stride, 704 // stride)
        assert torch.allclose(targets, expected, atol=1e-6)


def reference_fast_nms(boxes, scores, thresh, iou_thresh, top_k, max_det):
    out = []
    for c in range(scores.shape[1]):
        order = scores[:, c].argsort(descending=True)[:top_k].tolist()
        for j, a in enumerate(order):
            suppressed = any(
                pairwise_iou(Boxes(boxes[b:b + 1]), Boxes(boxes[a:a + 1]))[0, 0] > iou_thresh
                for b in order[:j])
            if not suppressed and scores[a, c] > thresh:
                out.append((float(scores[a, c]), a, c))
    out.sort(key=lambda t: -t[0])
    return out[:max_det]


@pytest.mark.parametrize("seed", range(4))
def test_fast_nms_equals_direct_reference(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(80, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 10 + torch.rand(80, 2, generator=g) * 20], 1)
    scores = torch.rand(80, 3, generator=g)
    idx, cls, sc = fast_nms(boxes, scores, 0.2, 0.5, top_k=50, max_det=70)
    expected = reference_fast_nms(boxes, scores, 0.2, 0.5, 50, 70)
    assert [(i, c) for _, i, c in expected] == list(zip(idx.tolist(), cls.tolist()))
    np.testing.assert_allclose(sc.numpy(), [s for s, _, _ in expected], rtol=1e-6)


def upsample_probabilities(proto, coefs, input_hw, output_hw, stride: float):
    """Dense reference for paste_masks: sigmoid(P C^T) upsampled to the output for all
    instances with F.interpolate (allocates n x H x W floats)."""
    probs = torch.sigmoid(torch.einsum("khw,nk->nhw", proto, coefs))
    valid_h = math.ceil(input_hw[0] / stride)
    valid_w = math.ceil(input_hw[1] / stride)
    probs = probs[:, :valid_h, :valid_w]
    # Scale so that the valid region maps exactly onto input_hw, then onto output_hw.
    full = F.interpolate(probs[:, None], scale_factor=(output_hw[0] / input_hw[0] * stride,
                                                       output_hw[1] / input_hw[1] * stride),
                         mode="bilinear", align_corners=False, recompute_scale_factor=False)
    return full[:, 0, :output_hw[0], :output_hw[1]]


def test_paste_masks_equals_dense_upsample_and_crop():
    g = torch.Generator().manual_seed(0)
    proto = torch.randn(8, 24, 32, generator=g)  # stride 4 over a 96x128 padded input
    coefs = torch.randn(20, 8, generator=g)
    input_hw, output_hw = (90, 120), (135, 180)  # resized input smaller than padding; 1.5x out
    xy = torch.rand(20, 2, generator=g) * torch.tensor([150.0, 110.0])
    boxes = torch.cat([xy, xy + 5 + torch.rand(20, 2, generator=g) * 40], 1)
    boxes[:, 2].clamp_(max=180)
    boxes[:, 3].clamp_(max=135)
    image_proto = proto[:, :math.ceil(input_hw[0] / 4), :math.ceil(input_hw[1] / 4)]
    pasted = paste_masks(image_proto, coefs, boxes, output_hw,
                         (4 * output_hw[0] / input_hw[0], 4 * output_hw[1] / input_hw[1]))
    probs = upsample_probabilities(proto, coefs, input_hw, output_hw, stride=4)
    dense = probs > 0.5
    again, maskness = paste_masks(image_proto, coefs, boxes, output_hw,
                                  (4 * output_hw[0] / input_hw[0], 4 * output_hw[1] / input_hw[1]),
                                  maskness=True)
    assert torch.equal(again, pasted)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        inside = torch.zeros(output_hw, dtype=torch.bool)
        inside[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
        assert torch.equal(pasted[i], dense[i] & inside)
        expected = probs[i][pasted[i]].mean() if pasted[i].any() else torch.tensor(0.0)
        assert torch.allclose(maskness[i], expected, atol=1e-5)
    assert pasted.any() and (maskness > 0.5).any()
    # zero coefficients: probability 0.5 everywhere, nothing above the threshold
    empty, zero = paste_masks(image_proto, torch.zeros(1, 8), boxes[:1], output_hw, (4.0, 4.0),
                              maskness=True)
    assert not empty.any() and zero.tolist() == [0.0]


def test_mask_loss_covers_the_box_and_a_margin_only():
    proto = torch.randn(4, 16, 16)
    coefs = torch.randn(1, 4)
    gt = torch.zeros(1, 16, 16)
    gt[0, 4:8, 4:8] = 1
    box = torch.tensor([[16.0, 16.0, 32.0, 32.0]])  # stride 4 -> proto pixels 4..7
    # grow 0.25 of 16 px = 4 px = one proto pixel per side: pixels 3..8
    for margin, grow, first_outside, dice in ((0.0, 0.0, 8, 0.0), (1.0, 0.0, 9, 0.0),
                                              (0.0, 0.25, 9, 0.0), (1.0, 0.25, 10, 0.0),
                                              (1.0, 0.0, 9, 1.0)):
        def loss(p, margin=margin, grow=grow, dice=dice):
            return mask_loss(p, coefs, gt, box, stride=4, margin=margin, grow=grow, dice=dice)
        base = loss(proto)
        changed = proto.clone()
        changed[:, first_outside:, first_outside:] += 5.0
        changed[:, :12 - first_outside, :12 - first_outside] += 5.0  # the same on the low side
        assert torch.allclose(loss(changed), base)
        changed[:, first_outside - 1, first_outside - 1] += 5.0  # last pixel inside
        assert not torch.allclose(loss(changed), base)
        changed = proto.clone()
        changed[:, 12 - first_outside, 12 - first_outside] += 5.0  # first pixel inside
        assert not torch.allclose(loss(changed), base)


def test_mask_dice_adds_the_overlap_loss_over_the_box():
    torch.manual_seed(0)
    proto, coefs = torch.randn(4, 16, 16), torch.randn(2, 4)
    gt = torch.zeros(2, 16, 16)
    gt[0, 4:8, 4:8] = 1
    gt[1, 2:12, 2:3] = 0.5  # a thin process, half covered
    boxes = torch.tensor([[16.0, 16.0, 32.0, 32.0], [8.0, 8.0, 48.0, 48.0]])
    bce = mask_loss(proto, coefs, gt, boxes, stride=4)
    prob = torch.sigmoid(torch.einsum("khw,nk->nhw", proto, coefs))
    expected = []
    for i, (y0, y1) in enumerate(((3, 9), (1, 13))):  # the box and one proto pixel
        p, g = prob[i, y0:y1, y0:y1], gt[i, y0:y1, y0:y1]
        expected.append(1 - (2 * (p * g).sum() + 1) / ((p * p).sum() + (g * g).sum() + 1))
    with_dice = mask_loss(proto, coefs, gt, boxes, stride=4, dice=0.5)
    assert torch.allclose(with_dice, bce + 0.5 * sum(expected), atol=1e-5)
    # a mask that matches its cell: Dice near 0
    exact = torch.where(gt[:1] > 0, 20.0, -20.0)
    exact_coefs = torch.eye(1)
    assert mask_loss(exact, exact_coefs, gt[:1], boxes[:1], stride=4, dice=1.0) < 0.01
    # the inverse mask over the 6x6 region: no overlap, 20 pixels of 1 beside 16 of the cell
    missed = [mask_loss(-exact, exact_coefs, gt[:1], boxes[:1], stride=4, dice=d) for d in (0, 1)]
    assert torch.isclose(missed[1] - missed[0], torch.tensor(1 - 1 / 37), atol=1e-4)

    model = build_model(tiny_cfg(**{"MODEL.YOLACT.MASK_DICE_WEIGHT": 1.0})).train()
    batch = [make_input(96, 128, 6)]
    torch.manual_seed(1)  # the same masks trained in both runs
    dice_loss = model(batch)["loss_mask"]
    model.mask_dice = 0.0
    torch.manual_seed(1)
    assert model(batch)["loss_mask"] < dice_loss


def test_mask_box_grow_trains_and_reads_masks_past_the_box():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.YOLACT.MASK_BOX_GROW": 0.25}))
    assert model.mask_box_grow == 0.25
    batch = [make_input(96, 128, 6)]
    model.train()
    torch.manual_seed(1)  # the same masks trained in both runs
    grown = model(batch)["loss_mask"]
    model.mask_box_grow = 0.0
    torch.manual_seed(1)
    assert not torch.allclose(model(batch)["loss_mask"], grown)

    model.eval()
    model.score_thresh = 0.0
    image = [{"image": make_input(96, 128, 0)["image"], "height": 150, "width": 200}]
    with torch.no_grad():
        in_box = model(image)[0]["instances"]
        model.mask_box_grow = 0.25
        past_box = model(image)[0]["instances"]
    assert torch.equal(in_box.pred_boxes.tensor, past_box.pred_boxes.tensor)
    boxes = in_box.pred_boxes.tensor
    inside, inside_grown = (torch.zeros(len(boxes), 150, 200, dtype=torch.bool) for _ in "ab")
    for i, (b, g) in enumerate(zip(box_windows(boxes, 150, 200).tolist(),
                                   box_windows(grown_boxes(boxes, 0.25), 150, 200).tolist())):
        inside[i, b[1]:b[3], b[0]:b[2]] = True
        inside_grown[i, g[1]:g[3], g[0]:g[2]] = True
    assert not (in_box.pred_masks & ~inside).any()
    assert not (past_box.pred_masks & ~inside_grown).any()
    assert (past_box.pred_masks & ~inside).any()  # read past the box
    # inside the box the masks are the same pixels (sampled at the same points)
    same = (past_box.pred_masks & inside) == in_box.pred_masks
    assert same.float().mean() > 0.9999


def test_ohem_uses_three_negatives_per_positive():
    logits = torch.zeros(1, 10, 3)
    logits[0, :, 2] = -torch.arange(10.0)  # background logit: lower = harder negative
    labels = torch.full((1, 10), 2)
    labels[0, 0] = 0
    labels[0, 9] = -1  # ignored even though it is the hardest
    loss = ohem_class_loss(logits, labels, negpos_ratio=3)
    lse = torch.logsumexp(logits[0], dim=1)
    expected = (lse[0] - logits[0, 0, 0]) + sum(lse[i] - logits[0, i, 2] for i in (6, 7, 8))
    assert torch.allclose(loss, expected)


def test_overfits_one_tiny_batch():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    model.train()
    batch = [make_input(96, 128, 5, seed=3), make_input(96, 128, 4, seed=4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(40):
        losses = model(batch)
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # as SOLVER.CLIP_GRADIENTS
        opt.step()
        history.append({k: float(v) for k, v in losses.items()})
    first = history[0]
    last = np.mean([[h[k] for k in first] for h in history[-5:]], 0)
    assert all(last[i] < first[k] for i, k in enumerate(first)), (first, last)
    assert sum(last) < 0.5 * sum(first.values())


def test_maskness_rescores_and_resorts_the_same_detections(model):
    model.eval()
    model.score_thresh = 0.0
    image = [{"image": make_input(96, 128, 0)["image"], "height": 150, "width": 200}]
    try:
        with torch.no_grad():
            plain = model(image)[0]["instances"]
            model.maskness = True
            rescored = model(image)[0]["instances"]
    finally:
        model.maskness, model.score_thresh = False, 0.05
    assert len(plain) == len(rescored) > 1
    assert (rescored.scores[:-1] >= rescored.scores[1:]).all()
    # the same detections (boxes), each score times a mean probability above the mask threshold
    key = {tuple(b): i for i, b in enumerate(plain.pred_boxes.tensor.tolist())}
    order = torch.tensor([key[tuple(b)] for b in rescored.pred_boxes.tensor.tolist()])
    assert not torch.equal(order, torch.arange(len(order)))  # re-sorted
    assert torch.equal(rescored.pred_masks, plain.pred_masks[order])
    ratio = rescored.scores / plain.scores[order]
    empty = ~rescored.pred_masks.flatten(1).any(dim=1)
    assert (ratio[empty] == 0).all()
    assert ((ratio[~empty] > model.mask_thresh) & (ratio[~empty] <= 1 + 1e-6)).all()


def test_grown_boxes():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert grown_boxes(boxes, 0.1).tolist() == [[8.0, 16.0, 32.0, 64.0]]
    assert grown_boxes(boxes, 0.0) is boxes


def test_box_windows_round_out_grow_and_clip():
    boxes = torch.tensor([[3.2, 4.0, 10.5, 9.0], [-5.0, 510.0, 20.0, 530.0], [700.0, 0.0, 704.0, 3.0]])
    assert box_windows(boxes, 520, 704).tolist() == [[3, 4, 11, 9], [0, 510, 20, 520],
                                                     [700, 0, 704, 3]]
    # In stride-4 cells, the boxes grown by 1 px; the image is 176 x 130 cells.
    assert box_windows(boxes, 520, 704, margin=1, stride=4).tolist() == [
        [0, 0, 3, 3], [0, 127, 6, 130], [174, 0, 176, 1]]
    # float64 boxes are rounded in float64 (float32 would make both 3.0: window [3, 3))
    assert box_windows(np.array([[2.9999999999, 0.0, 3.0000000001, 1.0]]), 10, 10).tolist() == [
        [2, 0, 4, 1]]


def test_vote_type():
    """The image's type: the class most detections above the threshold hold; a tie goes to
    the lower class; none above it: no type."""
    classes = torch.tensor([2, 1, 1, 2, 0, 2])
    scores = torch.tensor([0.9, 0.6, 0.55, 0.4, 0.7, 0.3])
    assert vote_type(classes, scores, 0.5, 3) == 1  # above 0.5: 2, 1, 1, 0
    assert vote_type(classes, scores, 0.25, 3) == 2  # all: 2 x3, 1 x2, 0 x1
    assert vote_type(classes[:2], scores[:2], 0.5, 3) == 1  # a tie of 1 and 2
    assert vote_type(classes, scores, 0.95, 3) is None
    assert vote_type(classes[:0], scores[:0], 0.5, 3) is None
