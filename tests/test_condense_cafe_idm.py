"""CAFE and IDM (selector/condense/cafe.py, idm.py): their losses, the discrimination loss, the dynamic bi-level
loop, IDM's partitioning and model queue, resume, and the CLI. Tiny problems (3 classes, 8x8 grey, width 8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selector.condense import condense_tensors, get_method
from selector.condense.cafe import discrimination_loss
from selector.condense.idm import ModelQueue, partition_expand
from selector.condense.methods import RealData, StepContext
from selector.condense.networks import ConvNet, make_network
from tests.test_condense import NET, _image_folder, spec_for, toy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ctx(real, images, ipc, seed=0, iteration=0, lr=0.0):
    leaf = images.detach().clone().requires_grad_(True)
    return StepContext(
        real=real,
        images=leaf,
        labels=torch.arange(real.num_classes).repeat_interleave(ipc),
        ipc=ipc,
        optimizer=torch.optim.SGD([leaf], lr=lr, momentum=0.5),
        make_net=lambda s: make_network({**spec_for(real), **NET}, s),
        iteration=iteration,
        generator=torch.Generator().manual_seed(seed),
        rng=np.random.default_rng(seed),
    )


def test_discrimination_loss_is_low_at_own_centres_and_high_when_swapped():
    centres = torch.eye(3) * 5.0
    real = centres.repeat_interleave(4, 0) + 0.1 * torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(3).repeat_interleave(4)
    own = discrimination_loss(real, labels, centres)
    swapped = discrimination_loss(real, labels, centres[[1, 2, 0]])
    assert own < 0.01 * 12  # each real sample sits at its own centre: near-certain, near-zero cross-entropy
    assert swapped > 20 * 12  # every sample is nearest to a wrong centre
    # summed, not averaged, over the real samples (the official reduction="sum")
    assert torch.isclose(discrimination_loss(real[:4], labels[:4], centres) * 3, own, rtol=0.3)


def test_cafe_aligns_every_layer_and_its_loss_decreases():
    x, y = toy()
    real = RealData(x, y)
    method = get_method("cafe", batch_real=16, init="noise")
    assert method.layer_weights(3) == [0.1, 0.1, 1.0, 1.0]
    net = ConvNet(1, 3, width=8, im_size=(8, 8))
    feats = net.block_features(torch.zeros(2, 1, 8, 8))
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 12, 12), (8, 6, 6), (8, 3, 3), (8, 1, 1)]
    start = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ctx = _ctx(real, start, 1, lr=1.0)
    fixed = make_network({**spec_for(real), **NET}, 7)
    losses = []
    for _ in range(8):
        ctx.rng = np.random.default_rng(3)  # the same real batches every step: the loss on one problem
        loss = method.matching_loss(ctx, fixed)
        losses.append(float(loss.detach()))
        ctx.update_images(loss)
    assert losses[-1] < 0.5 * losses[0], losses


def test_cafe_dynamic_loops_follow_the_stopping_rules():
    x, y = toy()
    real = RealData(x, y)
    base = {"batch_real": 8, "watch_batch": 4, "watch_window": 3, "max_outer_loop": 20, "max_inner_loop": 20}
    # accuracies always "stable" (span < 1.1) -> the outer loop stops after one full window; the inner loop's
    # network always "changed enough" (span > -1) -> every inner loop stops after one full window
    m = get_method("cafe", lambda_1=1.1, lambda_2=-1.0, **base)
    m.step(_ctx(real, x[:3], 1, lr=0.1))
    assert m.last_loops == [3, 3]  # 3 image updates, 2 inner loops between them, 3 epochs each
    # never stable -> the outer cap; never changed -> the inner cap
    m = get_method("cafe", lambda_1=-1.0, lambda_2=1.1, **{**base, "max_outer_loop": 4, "max_inner_loop": 5})
    m.step(_ctx(real, x[:3], 1, lr=0.1))
    assert m.last_loops == [5, 5, 5]
    # the image learning rate halves at each milestone passed
    m = get_method("cafe", bilevel="fixed", outer_loop=1, inner_loop=1, lr_milestones=[2, 4], batch_real=8)
    ctx = _ctx(real, x[:3], 1, iteration=4)
    m.step(ctx)
    assert ctx.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)


def test_idm_partition_expand_splits_quadrants_and_init_fills_them_with_real_images():
    img = torch.zeros(1, 1, 4, 4)
    img[..., :2, :2], img[..., 2:, :2], img[..., :2, 2:], img[..., 2:, 2:] = 1.0, 2.0, 3.0, 4.0
    out, labels = partition_expand(img, torch.tensor([7]))
    assert out.shape == (4, 1, 4, 4) and labels.tolist() == [7, 7, 7, 7]
    assert [float(o.mean()) for o in out] == [1.0, 2.0, 3.0, 4.0]  # official order: TL, BL, TR, BR
    assert all(torch.allclose(o, o.flatten()[0]) for o in out)
    x, y = toy()
    m = get_method("idm")
    init = m.init_images(RealData(x, y), 2, "real", np.random.default_rng(0))
    assert init.shape == (6, 1, 8, 8)
    # class 0's band (rows 0-1 of the 8x8 image) appears, downscaled, in row 0 of both top quadrants
    assert init[:2, :, 0].mean() > init[:2, :, 2:4].mean() + 0.5
    assert get_method("idm", partition=False).init_images(RealData(x, y), 2, "real", np.random.default_rng(0)) is None


def test_idm_class_aware_regularisation_decreases_with_the_images():
    x, y = toy()
    real = RealData(x, y)
    method = get_method("idm", batch_real=16, dsa_strategy="none")
    start = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    ctx = _ctx(real, start, 1, lr=0.5)
    net = make_network({**spec_for(real), **NET}, 5)
    plain = float(method.matching_loss(ctx, net, accuracy=0.0).detach())
    with_ce = float(method.matching_loss(_ctx(real, start, 1), net, accuracy=60.0).detach())
    assert with_ce > plain  # the CE term is weighted by ce_weight x the model's accuracy (percent)
    losses = []
    for _ in range(15):
        ctx.rng = np.random.default_rng(4)
        loss = method.matching_loss(ctx, net, accuracy=60.0)
        losses.append(float(loss.detach()))
        ctx.update_images(loss)
    assert losses[-1] < 0.85 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_model_queue_is_fifo_capped_and_trains_its_models():
    q = ModelQueue(3)
    nets = [ConvNet(1, 2, width=4, im_size=(8, 8)) for _ in range(5)]
    for t, net in enumerate(nets[:3]):
        q.push(net, born=t)
    assert len(q) == 3
    q.push(nets[3], born=3)  # at capacity: the oldest leaves
    assert len(q) == 3 and [m.born for m in q] == [1, 2, 3] and q[0].net is nets[1]
    before = [p.detach().clone() for p in q[1].net.parameters()]
    batch = (torch.randn(6, 1, 8, 8), torch.tensor([0, 1] * 3))
    q.train(1, [batch, batch])
    assert q[1].steps == 2 and q[1].seen == 12 and 0 <= q[1].accuracy <= 100
    assert any(not torch.equal(a, b) for a, b in zip(before, q[1].net.parameters()))
    assert q[0].steps == 0 and q[0].accuracy == 0.0
    q.reset_accuracy()
    assert q[1].seen == 0 and q[1].steps == 2

    # inside IDM: 3 models to start, one pushed every `push_every` iterations, capped at queue_size; two random
    # queued models train `train_steps` steps each iteration, so the queue's total training grows by 2 x steps
    x, y = toy()
    real = RealData(x, y)
    m = get_method("idm", queue_size=5, push_every=2, train_steps=3, train_batch=8, batch_real=8)
    images = m.init_images(real, 1, "real", np.random.default_rng(0))
    sizes, steps = [], []
    for it in range(6):
        m.step(_ctx(real, images, 1, seed=it, iteration=it, lr=0.2))
        sizes.append(len(m.queue))
        steps.append(sum(q.steps for q in m.queue))
    assert sizes == [4, 4, 5, 5, 5, 5]
    assert [q.born for q in m.queue] == [0, 0, 0, 2, 4]  # 3 + 1 at iteration 0; the first one left at 4
    assert steps[:4] == [6, 12, 18, 24]  # nothing left the queue yet: 2 models x 3 steps per iteration


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "name,options",
    [
        # dynamic loops with a short window, so the stopping rule itself runs across the interruption
        (
            "cafe",
            {
                "batch_real": 8,
                "watch_batch": 4,
                "watch_window": 2,
                "max_outer_loop": 3,
                "max_inner_loop": 3,
                "init": "real",
                "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
                "lr_milestones": [3],
            },
        ),
        # queue of 2 with a push every iteration: models leave the queue before and after the interruption
        (
            "idm",
            {
                "batch_real": 8,
                "train_batch": 8,
                "train_steps": 2,
                "queue_size": 2,
                "push_every": 1,
                "acc_reset_every": 3,
            },
        ),
    ],
)
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, name, options):
    x, y = toy()
    full = condense_tensors(x, y, method=name, ipc=2, iterations=5, net=NET, progress=False, **options)

    def interrupt(done, _):
        if done == 3:
            raise _Stop

    work = str(tmp_path / "work")
    with pytest.raises(_Stop):
        condense_tensors(
            x,
            y,
            method=name,
            ipc=2,
            iterations=5,
            net=NET,
            progress=False,
            work_dir=work,
            checkpoint_every=2,
            callback=interrupt,
            **options,
        )
    assert json.loads((tmp_path / "work" / "checkpoint.json").read_text())["iterations_done"] == 2
    resumed = condense_tensors(
        x, y, method=name, ipc=2, iterations=5, net=NET, progress=False, work_dir=work, checkpoint_every=2, **options
    )
    assert torch.equal(resumed.images, full.images)
    assert resumed.losses == full.losses


def test_cli_idm_evaluates_the_expanded_set_and_says_so(tmp_path, capsys):
    from selector.cli import main

    src = _image_folder(tmp_path / "src")
    out = tmp_path / "out"
    argv = ["condense", str(src), "--method", "idm", "--ipc", "1", "--out", str(out), "--iterations", "2"]
    argv += ["--width", "8", "--eval-runs", "1", "--eval-epochs", "2", "--batch-real", "8", "--quiet"]
    argv += ["--option", "train_batch=8", "--option", "train_steps=1"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "idm" and manifest["options"]["train_batch"] == 8
    assert manifest["options"]["partition"] is True and manifest["options"]["push_every"] == 5
    assert any("2x2 grid" in w for w in manifest["warnings"])
    assert "2x2 grid" in (out / "README.md").read_text()
    bad = ["condense", str(src), "--method", "cafe", "--out", str(tmp_path / "o2"), "--option", "nope=1"]
    assert main(bad) == 2
    assert "unknown option" in capsys.readouterr().err
    assert main([*bad[:-1], "bilevel"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
