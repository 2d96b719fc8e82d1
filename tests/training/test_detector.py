"""Dense head: target assignment, box/joint decoding, losses, ONNX export. (Post-processing is the service's own:
tests/training/test_decoding.py and tests/service/tasks.)"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.preprocess import Geometry
from training.dense.data import collate, default_input_spec, input_mask, to_sample
from training.dense.export import trace
from training.dense.targets import assign, box_iou_pairs, dense_loss
from training.models.detector import DenseConfig, DenseModel


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: torch's intra-op threads only add synchronisation, which on a busy machine costs 100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(task: str = "detection", **kw) -> DenseModel:
    torch.manual_seed(0)
    return DenseModel(DenseConfig(task=task, num_classes=kw.pop("num_classes", 3), width=8, head_width=16,
                                  prototypes=4, joints=kw.pop("joints", 5), **kw)).eval()


def test_centres_are_cell_centres_row_major():
    m = tiny()
    c = m.centres
    assert c.shape == (256, 2)
    assert c[0].tolist() == [4.0, 4.0] and c[1].tolist() == [12.0, 4.0] and c[16].tolist() == [4.0, 12.0]


def test_assign_centre_sampling_smallest_box_and_slivers():
    centres = DenseModel(DenseConfig(width=8, head_width=16)).centres
    boxes = torch.tensor([
        [0.0, 0.0, 64.0, 64.0],  # big: centre (32, 32); cells closer than 12 px to it (per axis)
        [30.0, 30.0, 46.0, 46.0],  # smaller, centre (38, 38): wins the cell both claim
        [100.0, 100.0, 103.0, 103.0],  # sliver containing no cell centre
    ])
    idx = assign(centres, boxes, stride=8)
    pos_big = {tuple(centres[i].tolist()) for i in torch.nonzero(idx == 0).flatten()}
    pos_small = {tuple(centres[i].tolist()) for i in torch.nonzero(idx == 1).flatten()}
    assert pos_small == {(36.0, 36.0), (44.0, 36.0), (36.0, 44.0), (44.0, 44.0)}
    assert pos_big == {(28.0, 28.0), (36.0, 28.0), (28.0, 36.0)}
    sliver = torch.nonzero(idx == 2).flatten().tolist()
    assert len(sliver) == 1 and centres[sliver[0]].tolist() == [100.0, 100.0]
    assert (idx >= 0).sum() == 3 + 4 + 1
    # a box whose cells are all taken by a smaller one still gets its nearest cell
    idx = assign(centres, torch.tensor([[0.0, 0.0, 64.0, 64.0], [26.0, 26.0, 38.0, 38.0]]), stride=8)
    assert (idx == 1).sum() == 3 and (idx == 0).sum() == 1  # it takes its nearest cell from the small box
    assert (assign(centres, torch.zeros(0, 4), 8) == -1).all()


def test_decode_boxes_and_keypoints():
    m = tiny("keypoints")
    raw = torch.zeros(1, 256, 4)
    raw[0, 17] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    boxes = m.decode_boxes(raw)
    sp = torch.nn.functional.softplus(torch.tensor([0.0, 1.0, 2.0, 3.0])) * 8
    cx, cy = 12.0, 12.0  # cell 17 = row 1, column 1
    assert torch.allclose(boxes[0, 17], torch.tensor([cx - sp[0], cy - sp[1], cx + sp[2], cy + sp[3]]))
    kraw = torch.zeros(1, 256, 5, 3)
    kraw[0, 17, 2] = torch.tensor([1.5, -2.0, 0.0])
    k = m.decode_keypoints(kraw)
    assert k[0, 17, 2].tolist() == [cx + 12.0, cy - 16.0, 0.5]


def test_box_iou_pairs():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    iou, giou = box_iou_pairs(a, b)
    assert iou[0] == pytest.approx(1.0) and giou[0] == pytest.approx(1.0)
    assert iou[1] == pytest.approx(0.0) and giou[1] == pytest.approx(-(300 - 200) / 300, abs=1e-6)


def test_input_mask_is_letterboxed():
    g = Geometry(160, 120, 128, 128, 0.8, 0.8, 0.0, 16.0)
    mask = np.zeros((120, 160), bool)
    mask[:, :80] = True  # left half of the image
    m = input_mask(mask, g, 4)
    assert m.shape == (32, 32)
    assert m[:4].max() == 0 and m[-4:].max() == 0  # letterbox bands
    assert m[10, :15].min() > 0.99 and m[10, 17:].max() < 0.01


def test_loss_decreases_on_one_batch():
    from training.data import scenes

    spec = default_input_spec()
    class_of = {1: 0, 2: 1, 3: 2, 4: 3}
    samples = []
    for i in range(4):
        image, anns, _ = scenes.render_scene(scenes.scene_rng(1, i), 160, 120)
        samples.append(to_sample(image, anns, spec, class_of, "detection"))
    batch = collate(samples, np.array([True, False, True, False]))
    model = tiny(num_classes=4).train()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(6):
        loss = dense_loss(model, model.raw(batch["x"]), batch)["total"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


def test_flip_mirrors_boxes_and_swaps_joints():
    spec = default_input_spec()
    from PIL import Image

    image = Image.new("RGB", (160, 120))
    ann = {"category_id": 4, "bbox": [10, 20, 30, 40], "iscrowd": 0,
           "keypoints": [20, 30, 2, 25, 35, 2, 0, 0, 0]}
    s = to_sample(image, [ann], spec, {4: 0}, "keypoints")
    b = collate([s], np.array([True]), [(1, 2)])
    assert torch.allclose(b["boxes"][0, 0], torch.tensor([128 - 32.0, 32.0, 128 - 8.0, 64.0]))
    k = b["keypoints"][0, 0]
    assert k[0].tolist() == [128 - 16.0, 40.0, 2.0]
    assert k[2].tolist() == [128 - 20.0, 44.0, 2.0] and k[1].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("task", ["detection", "instance_segmentation", "keypoints"])
def test_export_parity_dynamic_batch(task):
    model = tiny(task)
    x = torch.rand(3, 3, 128, 128)
    proto = trace(model, x[:2], "images")
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == model.output_names
    for batch in (x[:1], x):
        with torch.no_grad():
            expected = [t.numpy() for t in model(batch)]
        got = session.run(None, {"images": batch.numpy()})
        for e, g in zip(expected, got, strict=True):
            assert e.shape == g.shape
            assert np.abs(e - g).max() < 1e-3
    assert got[0].shape == (3, 256, 4) and got[1].shape == (3, 256, 3)
    if task == "instance_segmentation":
        assert got[2].shape == (3, 256, 4) and got[3].shape == (3, 4, 32, 32)
    if task == "keypoints":
        assert got[2].shape == (3, 256, 5, 3) and ((got[2][..., 2] >= 0) & (got[2][..., 2] <= 1)).all()
