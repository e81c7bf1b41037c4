"""The matting task's training loss (Deep Image Matting's alpha and composition losses, as the A2U
release weights and normalises them) and its frozen-BatchNorm option, on tiny tensors."""

from __future__ import annotations

import math
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from uplab.tasks.matting import MattingTask, composition_l1, unknown_region_l1

EPS = 1e-6


class TinyEncoder(nn.Module):
    """One conv-BN feature: enough for DenseModel, with a BatchNorm to freeze."""

    def __init__(self, in_chans: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.channels = [4]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.bn(self.conv(x))]


class LastFeature(nn.Module):
    def __init__(self, in_channels, upsampler):
        super().__init__()
        self.out_channels = in_channels[-1]

    def forward(self, features):
        return features[-1]


def tiny_task(**options) -> MattingTask:
    return MattingTask(
        backbone=TinyEncoder,
        decoder=LastFeature,
        upsampler=nn.Identity,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        **options,
    )


def two_by_two():
    """One 2x2 image: two unknown pixels (top row), one known foreground, one known background."""
    pred = torch.tensor([[[[0.5, 0.2], [1.0, 0.0]]]])
    alpha = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    trimap = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    fg = torch.tensor(
        [[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]], [[0.5, 0.5], [1.0, 1.0]]]
    )[None]
    bg = torch.tensor(
        [[[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.5], [0.0, 0.0]], [[0.5, 0.0], [0.0, 0.0]]]
    )[None]
    return pred, alpha, fg, bg, trimap


def test_composition_loss_matches_a_hand_computed_value():
    pred, alpha, fg, bg, trimap = two_by_two()
    # c_pred - c_gt = (pred - alpha) (fg - bg) per channel, at the two unknown pixels:
    # pixel (0, 0): -0.5 * (1, -1, 0); pixel (0, 1): 0.2 * (0, 0.5, 0.5)
    diffs = [0.5, 0.5, 0.0, 0.0, 0.1, 0.1]
    total = sum(math.sqrt(d * d + EPS**2) for d in diffs)
    assert composition_l1(pred, alpha, fg, bg, trimap).item() == pytest.approx(total / 2, rel=1e-6)
    # the release's per-image normalisation: the unknown count + 1
    assert composition_l1(pred, alpha, fg, bg, trimap, per_image=True).item() == pytest.approx(
        total / 3, rel=1e-6
    )


def test_losses_are_zero_for_a_perfect_prediction():
    _, alpha, fg, bg, trimap = two_by_two()
    # only the Charbonnier constant is left: eps per unknown pixel and channel
    assert composition_l1(alpha, alpha, fg, bg, trimap).item() == pytest.approx(3 * EPS, abs=1e-9)
    assert unknown_region_l1(alpha, alpha, trimap).item() == pytest.approx(EPS, abs=1e-9)


def test_composition_loss_rejects_layers_of_the_wrong_shape():
    pred, alpha, fg, bg, trimap = two_by_two()
    with pytest.raises(ValueError, match=r"bg must be \[B, 3, H, W\]"):
        composition_l1(pred, alpha, fg, bg[:, :1], trimap)


def test_training_loss_weights_alpha_and_composition_losses():
    pred, alpha, fg, bg, trimap = two_by_two()
    batch = {"alpha": alpha, "trimap": trimap, "fg": fg, "bg": bg}
    alpha_only = tiny_task().training_loss(pred, batch)
    assert alpha_only.item() == pytest.approx(unknown_region_l1(pred, alpha, trimap).item())
    release = tiny_task(composition_weight=0.5, per_image_loss=True).training_loss(pred, batch)
    expected = 0.5 * unknown_region_l1(pred, alpha, trimap, per_image=True) + 0.5 * composition_l1(
        pred, alpha, fg, bg, trimap, per_image=True
    )
    assert release.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match=r"composition_weight must be in \[0, 1\]"):
        tiny_task(composition_weight=1.5)


def test_composition_loss_without_fg_and_bg_names_them_and_the_a2u_pipeline():
    pred, alpha, _, _, trimap = two_by_two()
    task = tiny_task(composition_weight=0.5)
    with pytest.raises(ValueError, match=r"missing \['fg', 'bg'\].*a2u_matting_train"):
        task.training_loss(pred, {"alpha": alpha, "trimap": trimap})


def fit_one_step(task: MattingTask) -> None:
    torch.manual_seed(0)
    size = 8
    alpha = torch.rand(2, 1, size, size)
    batch = {
        "image": torch.randn(2, 3, size, size),
        "trimap": torch.full((2, 1, size, size), 0.5),
        "alpha": alpha,
        "fg": torch.rand(2, 3, size, size),
        "bg": torch.rand(2, 3, size, size),
    }
    samples = [{k: v[i] for k, v in batch.items()} for i in range(2)]
    trainer = pl.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(samples, batch_size=2))


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freeze_bn_keeps_the_encoder_statistics_through_a_training_step(freeze_bn):
    task = tiny_task(composition_weight=0.5, freeze_bn=freeze_bn)
    bn = task.model.backbone.bn
    mean, var, weight = bn.running_mean.clone(), bn.running_var.clone(), bn.weight.detach().clone()
    fit_one_step(task)
    unchanged = torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert unchanged == freeze_bn
    assert not torch.equal(bn.weight.detach(), weight)  # the affine weights train either way


def test_linear_output_trains_on_the_raw_output_and_is_clamped_for_evaluation():
    torch.manual_seed(0)
    image, trimap = torch.randn(1, 3, 4, 4) * 50, torch.full((1, 1, 4, 4), 0.5)
    trimap[..., 0, 0] = 1.0
    linear, sigmoid = tiny_task(output="linear"), tiny_task()
    sigmoid.load_state_dict(linear.state_dict())
    raw = linear(image, trimap)
    assert raw.min() < 0 or raw.max() > 1  # the release's predictor is not squashed
    torch.testing.assert_close(sigmoid(image, trimap), torch.sigmoid(raw))
    evaluated = linear.predict_alpha(image, trimap)
    expected = raw.clamp(0, 1)
    expected[..., 0, 0] = 1.0  # the trimap's known foreground pasted
    torch.testing.assert_close(evaluated, expected)
    with pytest.raises(ValueError, match=r"output must be one of \('sigmoid', 'linear'\)"):
        tiny_task(output="relu")


def test_the_unknown_region_enters_the_network_as_trimap_unknown_input():
    trimap = torch.tensor([[[[0.0, 0.5], [1.0, 0.5]]]])
    seen = []
    for value in (0.5, 128 / 255):
        task = tiny_task(trimap_unknown_input=value)
        task.model.backbone.register_forward_hook(lambda m, args, out: seen.append(args[0][:, 3]))
        task(torch.zeros(1, 3, 2, 2), trimap)
    torch.testing.assert_close(seen[0], trimap[:, 0])
    torch.testing.assert_close(seen[1], torch.tensor([[[0.0, 128 / 255], [1.0, 128 / 255]]]))


def test_eval_size_divisor_reflect_pads_image_and_trimap_and_crops_the_output():
    torch.manual_seed(0)
    image, trimap = torch.randn(1, 3, 5, 6), torch.randint(0, 3, (1, 1, 5, 6)) / 2
    trimap[..., 0, :] = 0.5
    task = tiny_task(output="linear", eval_size_divisor=4)
    seen = []
    task.model.backbone.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    alpha = task.predict_alpha(image, trimap)
    padded = torch.nn.functional.pad(torch.cat([image, trimap], 1), (0, 2, 0, 3), mode="reflect")
    torch.testing.assert_close(seen[0], padded)  # the trimap channel reflected too, as released
    expected = task(padded[:, :3], padded[:, 3:])[..., :5, :6].clamp(0, 1)
    torch.testing.assert_close(alpha, task.paste_known(expected, trimap))
    with pytest.raises(ValueError, match="eval_size_divisor must be a positive integer or None"):
        tiny_task(eval_size_divisor=0)
