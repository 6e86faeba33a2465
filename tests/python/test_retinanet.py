"""The RetinaNet-PAN-IoU definition runs unchanged in the C++ runtime: same anchors, same decoding."""
import numpy as np
import pytest
import torch
import torchvision

import bloodcv
from bloodcv.export import export_model
from bloodcv.models.retinanet import RetinaNetPan, anchor_metadata, decode_deltas, generate_anchors


def test_anchor_order_matches_the_flattened_outputs():
    model = RetinaNetPan(num_classes=3).eval()
    anchors, per_level = generate_anchors((128, 96), **{k: v for k, v in anchor_metadata(["a"], [128, 96])["decoder"].items()
                                                         if k in ("strides", "sizes", "aspect_ratios", "scales", "center_offset")})
    with torch.no_grad():
        cls, box, iou = model(torch.rand(2, 3, 96, 128))
    assert per_level == [16 * 12 * 9, 8 * 6 * 9, 4 * 3 * 9]
    assert cls.shape == (2, len(anchors), 3) and box.shape == (2, len(anchors), 4) and iou.shape == (2, len(anchors))


def test_exported_model_decodes_the_same_in_cpp_and_python(tmp_path):
    torch.manual_seed(0)
    model = RetinaNetPan(num_classes=2).eval()
    torch.nn.init.zeros_(model.cls_out.bias)  # scores near 0.5, so that there is something to keep
    meta = anchor_metadata(["WBC", "RBC"], [128, 128], score_threshold=0.5, nms_iou_threshold=0.5)
    path = export_model(model, tmp_path / "retina.pt", meta, torch.rand(1, 3, 128, 128))
    image = (np.random.default_rng(0).uniform(0, 255, (128, 128, 3))).astype(np.uint8)  # BGR, input size: no resize

    (cpp,) = bloodcv.TorchScriptDetector(str(path)).detect([image])

    d = meta["decoder"]
    anchors, per_level = generate_anchors((128, 128), d["strides"], d["sizes"], d["aspect_ratios"], d["scales"], d["center_offset"])
    x = torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1).float()[None] / 255  # the model normalises itself
    with torch.no_grad():
        cls, box, iou = (t[0] for t in model(x))
    scores, boxes, labels, ious, start = [], [], [], [], 0
    for n in per_level:  # per level: candidates above the threshold, top 1000
        s = cls[start:start + n].sigmoid().flatten()
        keep = torch.nonzero(s > d["score_threshold"]).flatten()
        keep = keep[s[keep].argsort(descending=True)[:1000]]
        a = keep // 2 + start
        scores.append(s[keep])
        labels.append(keep % 2)
        boxes.append(decode_deltas(anchors[a], box[a]))
        ious.append(iou[a].sigmoid())
        start += n
    s, b, l, q = torch.cat(scores), torch.cat(boxes), torch.cat(labels), torch.cat(ious)
    rank = (s ** 0.5) * (q ** 0.5)
    keep = torchvision.ops.batched_nms(b, rank, l, 0.5)
    b = b[keep].clamp(0, 128)
    assert len(keep) > 5
    np.testing.assert_allclose(cpp["boxes"], b.numpy(), atol=1e-3)
    np.testing.assert_allclose(cpp["scores"], rank[keep].numpy(), rtol=1e-5)
    np.testing.assert_allclose(cpp["predicted_ious"], q[keep].numpy(), rtol=1e-5)
    assert cpp["labels"].tolist() == l[keep].tolist()
