"""The task object: what binary and multi-class runs do differently, in one place."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib import tta
from lib.errors import PipelineError
from lib.losses import Combined
from lib.metrics import dice
from lib.task import BINARY, Task, read_class_colors
import params


def test_binary_is_todays_task():
    assert BINARY.binary and BINARY.channels == 1 and BINARY.scored == [1] and BINARY.truth_bits == 1
    assert isinstance(BINARY.loss("bce_dice", 1.0, 1.0), Combined)
    logits = torch.tensor([[[[0.0, 2.0], [-2.0, 10.0]]]])
    prob = BINARY.probabilities(logits)
    assert torch.allclose(prob, torch.sigmoid(logits))
    maps = BINARY.to_maps(prob)
    assert maps.shape == (1, 2, 2) and maps.dtype == np.uint8 and maps[0, 0, 0] == 128  # round(0.5 * 255)
    assert BINARY.row_ids("car_01.jpg", "car_01") == ["car_01.jpg"]


def test_multiclass_maps_stack_the_classes_and_sum_to_one():
    task = Task(4, ("background", "road", "roof", "tree"))
    logits = torch.randn(2, 4, 3, 5)
    prob = task.probabilities(logits)
    assert torch.allclose(prob.sum(1), torch.ones(2, 3, 5))
    maps = task.to_maps(prob)
    assert maps.shape == (2, 12, 5) == (2, *task.map_size(3, 5))
    per_class = task.split_map(maps[1])
    assert per_class.shape == (4, 3, 5)
    assert np.array_equal(per_class[2], (prob[1, 2] * 255).round().to(torch.uint8).numpy())
    # argmax of the stored maps is the argmax of the probabilities (up to ties at uint8 rounding)
    assert (task.decide(per_class, 0) == prob[1].argmax(0).numpy()).mean() > 0.9
    assert isinstance(task.loss("bce_dice", 1.0, 1.0), Combined)
    assert task.truth_bits == 2 and Task(5).truth_bits == 3 and Task(2).truth_bits == 1


def test_class_dices_pinned_values_and_empty_classes():
    task = Task(3, ("bg", "a", "b"))
    truth = np.array([[0, 1, 1, 2]], np.uint8)
    pred = np.array([[0, 1, 2, 2]], np.uint8)
    # class a: pred {1}, truth {1, 2} -> 2*1/3; class b: pred {2, 3}, truth {3} -> 2*1/3
    assert np.allclose(task.class_dices(pred, truth), [2 / 3, 2 / 3])
    # a class in neither image counts 1 (as the binary empty-empty case)
    assert np.allclose(task.class_dices(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)), [1.0, 1.0])
    assert task.score(pred, truth) == pytest.approx(2 / 3)
    # binary: the same number as metrics.dice
    rng = np.random.default_rng(0)
    a, b = rng.random((20, 30)) > 0.5, rng.random((20, 30)) > 0.3
    assert BINARY.score(a, b) == pytest.approx(dice(a, b))


def test_losses_train_a_multiclass_net_direction():
    task = Task(3)
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (1, 4, 4))
    loss = task.loss("bce_dice", 1.0, 1.0)(logits, labels)
    loss.backward()
    # the gradient pushes each pixel's true class up
    grad = logits.grad[0]
    assert all(grad[labels[0, i, j], i, j] < 0 for i in range(4) for j in range(4))


def test_tta_averages_softmax_probabilities():
    task = Task(3)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    prob = tta.predict_proba(conv, x, "hflip", task)
    manual = (torch.softmax(conv(x), 1) + torch.softmax(conv(x.flip(-1)), 1).flip(-1)) / 2
    assert torch.allclose(prob, manual, atol=1e-6)
    assert torch.allclose(prob.sum(1), torch.ones(2, 8, 8), atol=1e-5)


def test_class_colors_file(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text("name,r,g,b\nbackground,0,0,0\nroad,128,64,128\nbuilding,70,70,70\n")
    names, colors = read_class_colors(path)
    assert names == ("background", "road", "building") and colors[1] == (128, 64, 128)
    p = params.make_params(classes=3, class_colors=str(path))
    assert Task.of(p).names == names
    with pytest.raises(PipelineError, match="lists 3 classes but --classes is 4"):
        Task.of(params.make_params(classes=4, class_colors=str(path)))
    path.write_text("background,0,0,0\nroad,300,0,0\n")
    with pytest.raises(PipelineError, match=r"row 2 .* 0\.\.255"):
        read_class_colors(path)
    path.write_text("background,0,0,0\nroad,0,0,0\n")
    with pytest.raises(PipelineError, match="unique"):
        read_class_colors(path)


def test_multiclass_row_ids():
    task = Task(3, ("background", "road", "tree"))
    assert task.row_ids("scene_1.png", "scene_1") == ["scene_1_road", "scene_1_tree"]


def test_a_task_is_made_from_settings_or_from_its_record():
    p = params.make_params(classes=3, class_names="bg, road, tree")
    task = Task.of(p)
    assert task == Task(3, ("bg", "road", "tree")) and Task.from_record(task.record()) == task
    assert Task.of(params.make_params()) == BINARY == Task.from_record(BINARY.record())
    assert Task.from_record({"classes": 3, "names": []}).names == ("class0", "class1", "class2")


@pytest.mark.parametrize("task", [BINARY, Task(2), Task(5)])
def test_truth_bits_round_trip(task):
    rng = np.random.default_rng(task.classes)
    truth = rng.integers(0, 2, (19, 23)).astype(bool) if task.binary else \
        rng.integers(0, task.classes, (19, 23)).astype(np.uint8)
    packed = task.pack_truth(truth)
    assert packed.size == -(-19 * 23 * task.truth_bits // 8)
    back = task.unpack_truth(packed, (19, 23))
    assert back.dtype == truth.dtype and np.array_equal(back, truth)


def test_the_task_decides_scores_and_names_per_class():
    maps = np.array([[[10, 200], [128, 127]]], np.uint8)
    assert np.array_equal(BINARY.decide(maps, 127), [[False, True], [True, False]])
    rng = np.random.default_rng(1)
    a, b = rng.random((20, 30)) > 0.5, rng.random((20, 30)) > 0.3
    assert BINARY.class_dices(a, b).tolist() == [dice(a, b)]  # exactly metrics.dice
    assert BINARY.by_class([0.9]) == {} and Task(3, ("bg", "a", "b")).by_class([0.5, 0.25]) == {"a": 0.5, "b": 0.25}
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    assert Task(3).class_pixels(labels) == (1, 2, 1) and BINARY.class_pixels(labels > 0) == ()
    assert BINARY.truth_rle(labels > 0, "row") == "2 3" and Task(3).truth_rle(labels, "row") is None
    notes = Task(3, ("bg", "a", "b")).class_notes([(3, 1, 0), (4, 0, 0)])
    assert notes == ["classes (share of pixels, images holding it): bg 87.5% 2, a 12.5% 1, b 0.0% 0",
                     "class(es) b in no training mask: the model cannot learn them"]
    assert BINARY.class_notes([()]) == []


def test_network_targets_soft_masks_and_nearest_labels():
    truth = np.zeros((8, 8), bool)
    truth[:, :3] = True
    soft = BINARY.net_target(truth, 4, 4)
    assert soft.dtype == np.uint8 and soft[0].tolist() == [255, 128, 0, 0]  # area fraction at the edge
    labels = Task(3).net_target(truth.astype(np.uint8) * 2, 4, 4)
    assert set(np.unique(labels).tolist()) <= {0, 2}
