"""Dataset condensation (selector/condense): methods, DSA, evaluation, resume, bad input, the CLI end to end.

Everything is tiny (3 classes, 8x8 grey images, ConvNets of width 8, a few iterations) so the file runs in
seconds on a CPU.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from selector.condense import METHODS, condense_tensors, evaluate_synthetic, get_method
from selector.condense.augment import OPS, sample_augmentation
from selector.condense.methods import RealData, StepContext
from selector.condense.networks import make_network
from selector.errors import ConfigError, DataError

NET = {"width": 8}
SIDE = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: thread hand-offs cost more than they save on a shared CPU
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy(n_per_class: int = 20, k: int = 3, seed: int = 0, side: int = SIDE):
    """Separable toy set: class c lights up horizontal band c of the image, plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_per_class * k, 1, side, side, generator=g) * 0.5
    y = torch.arange(k).repeat_interleave(n_per_class)
    band = side // k
    for c in range(k):
        x[y == c, :, c * band : (c + 1) * band] += 2.0
    return x, y


def _fixed_loss(method, images, real, ipc, n_nets: int = 3) -> float:
    """The method's matching loss on fixed networks and fixed real batches (comparable before/after)."""
    total = 0.0
    for s in range(n_nets):
        leaf = images.detach().clone().requires_grad_(True)
        ctx = StepContext(
            real=real,
            images=leaf,
            labels=torch.arange(real.num_classes).repeat_interleave(ipc),
            ipc=ipc,
            optimizer=torch.optim.SGD([leaf], lr=0.0),
            make_net=lambda seed: make_network({**spec_for(real), **NET}, seed),
            iteration=0,
            generator=torch.Generator().manual_seed(100 + s),
            rng=np.random.default_rng(100 + s),
        )
        net = ctx.make_net(1000 + s)
        total += float(method.matching_loss(ctx, net).detach())
    return total / n_nets


def spec_for(real):
    return {"channel": real.channel, "num_classes": real.num_classes, "im_size": real.im_size}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_lowers_its_matching_loss(name):
    x, y = toy()
    real = RealData(x, y)
    # lr_img raised from the papers' values so that a handful of iterations move noise visibly
    options = {"init": "noise", "batch_real": 16, "lr_img": 1.0 if name in ("dc", "dsa", "cafe") else 5.0}
    # the papers' loop sizes are far too long for a unit test; the CAFE/IDM file tests the dynamic loop itself
    options.update(
        {"cafe": {"bilevel": "fixed", "outer_loop": 2, "inner_loop": 2}, "idm": {"train_batch": 16}}.get(name, {})
    )
    method = get_method(name, **options)
    before = condense_tensors(x, y, method=name, ipc=1, iterations=0, net=NET, progress=False, **options)
    after = condense_tensors(x, y, method=name, ipc=1, iterations=6, net=NET, progress=False, **options)
    assert len(after.losses) == 6 and all(np.isfinite(after.losses))
    loss_before = _fixed_loss(method, before.images, real, 1)
    loss_after = _fixed_loss(method, after.images, real, 1)
    assert loss_after < 0.9 * loss_before, (name, loss_before, loss_after)


@pytest.mark.parametrize("op", OPS)
def test_dsa_is_differentiable_and_identical_on_both_batches(op):
    g = torch.Generator().manual_seed(3)
    for _ in range(3):  # several draws: flip/crop parameters differ from draw to draw
        aug = sample_augmentation(g, strategy=op, image_size=(6, 6))
        assert aug.op == op
        real = torch.rand(5, 2, 6, 6, dtype=torch.double)
        syn = torch.rand(2, 2, 6, 6, dtype=torch.double)
        # Siamese: one set of parameters for every image of both batches (colour statistics are per image), so an
        # image comes out the same whichever batch it is in
        both = torch.cat([real[:1], syn])
        assert torch.allclose(aug(real)[0], aug(both)[0])
        assert torch.allclose(aug(syn), aug(both)[1:])
        x = torch.rand(2, 2, 6, 6, dtype=torch.double, requires_grad=True)
        assert torch.autograd.gradcheck(aug, (x,), eps=1e-6, atol=1e-5)
        out = aug(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(grad).all()
    identity = sample_augmentation(g, strategy="none")
    assert identity(real) is real


def test_dsa_per_image_draws_differ_and_keep_shapes():
    g = torch.Generator().manual_seed(0)
    aug = sample_augmentation(g, strategy="scale", image_size=(8, 8), n=4)
    x = torch.rand(1, 1, 8, 8).repeat(4, 1, 1, 1)
    out = aug(x)
    assert out.shape == x.shape
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="per image"):
        aug(torch.rand(3, 1, 8, 8))


def test_dm_beats_its_random_noise_initialisation():
    x, y = toy(n_per_class=30)
    xt, yt = toy(n_per_class=30, seed=1)
    options = {"init": "noise", "batch_real": 32, "lr_img": 5.0}
    noise = condense_tensors(x, y, method="dm", ipc=2, iterations=0, net=NET, progress=False, **options)
    learned = condense_tensors(x, y, method="dm", ipc=2, iterations=25, net=NET, progress=False, **options)
    acc_noise = evaluate_synthetic(noise.images, noise.labels, xt, yt, runs=2, epochs=30, net=NET).mean
    acc_dm = evaluate_synthetic(learned.images, learned.labels, xt, yt, runs=2, epochs=30, net=NET).mean
    assert acc_dm > acc_noise + 0.2, (acc_noise, acc_dm)
    assert acc_dm > 0.8


class _Stop(Exception):
    pass


@pytest.mark.parametrize("name", ["dc", "dm"])
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, name):
    x, y = toy()
    options = {"batch_real": 8}
    if name == "dc":
        options.update(outer_loop=2, inner_loop=2)
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
    # other settings must not silently continue this checkpoint
    with pytest.raises(ConfigError, match="checkpoint of other settings"):
        condense_tensors(
            x, y, method=name, ipc=2, iterations=5, net=NET, progress=False, work_dir=work, seed=1, **options
        )


def test_bad_tensor_input_is_a_clear_error():
    x, y = toy()
    with pytest.raises(DataError, match="at least two classes"):
        condense_tensors(x[y == 0], y[y == 0], method="dm", ipc=1, iterations=1, net=NET, progress=False)
    with pytest.raises(DataError, match="ipc 25 is larger than class"):
        condense_tensors(x, y, method="dm", ipc=25, iterations=1, net=NET, progress=False)
    with pytest.raises(ConfigError, match="unknown condensation method"):
        condense_tensors(x, y, method="nope", ipc=1)
    with pytest.raises(ConfigError, match="unknown option"):
        condense_tensors(x, y, method="dm", ipc=1, inner_loop=3)


def _image_folder(root, classes=("bag", "coat", "shoe"), n=12, side=SIDE, seed=0):
    x, y = toy(n_per_class=n, k=len(classes), seed=seed, side=side)
    pixels = np.clip((x.numpy() * 0.25 + 0.3) * 255, 0, 255).astype(np.uint8)
    for i, (img, label) in enumerate(zip(pixels, y.tolist())):
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0], mode="L").save(folder / f"{i:03d}.png")
    return root


def test_cli_end_to_end_writes_images_dataset_tensors_and_card(tmp_path, capsys):
    from datasets import Image as ImageFeature
    from datasets import load_from_disk
    from safetensors.torch import load_file

    from selector.cli import main

    src = _image_folder(tmp_path / "src")
    (src / "bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    out = tmp_path / "out"
    argv = [
        "condense",
        str(src),
        "--method",
        "dm",
        "--ipc",
        "2",
        "--out",
        str(out),
        "--iterations",
        "3",
        "--width",
        "8",
        "--eval-runs",
        "2",
        "--eval-epochs",
        "5",
        "--holdout",
        "0.25",
        "--batch-real",
        "8",
        "--seed",
        "7",
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 synthetic images" in printed and "test accuracy on the saved PNGs" in printed
    assert "1 unusable source images" in printed

    with open(out / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {r["label_name"] for r in rows} == {"bag", "coat", "shoe"}
    for r in rows:
        with Image.open(out / r["file"]) as img:
            assert img.size == (SIDE, SIDE) and img.mode == "L"

    ds = load_from_disk(str(out / "dataset"))
    assert isinstance(ds.features["image"], ImageFeature) and len(ds) == 6
    assert ds.features["label"].names == ["bag", "coat", "shoe"]

    tensors = load_file(str(out / "synthetic.safetensors"))
    assert tensors["images"].dtype == torch.float32 and tuple(tensors["images"].shape) == (6, 1, SIDE, SIDE)
    assert tensors["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    # the PNGs are the float images rounded to 8 bits
    png = np.asarray(Image.open(out / rows[0]["file"]), dtype=np.float32) / 255.0
    assert np.abs(png - np.clip(tensors["images"][0, 0].numpy(), 0, 1)).max() <= 0.5 / 255 + 1e-6

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "dm" and manifest["ipc"] == 2 and manifest["iterations_done"] == 3
    assert manifest["seed"] == 7 and manifest["errors_by_kind"] == {"corrupt_image": 1}
    ev = manifest["evaluation"]
    assert ev["runs"] == 2 and len(ev["accuracies"]) == 2 and 0 <= ev["mean"] <= 1
    card = (out / "README.md").read_text()
    for needle in (
        "`dm`",
        "images per class (ipc) | 2",
        "iterations | 3 of 3",
        "seed | 7",
        f"{100 * ev['mean']:.2f} ± {100 * ev['std']:.2f} %",
        "saved **PNG images**",
        "corrupt_image",
    ):
        assert needle in card, needle

    # the PNG folder reads back as an image folder; a non-empty --out is refused without --overwrite
    from selector.images import load_image_classification

    again, _ = load_image_classification(str(out / "images"))
    assert len(again) == 6 and set(again["label_name"]) == {"bag", "coat", "shoe"}
    assert main(["condense", str(src), "--ipc", "1", "--out", str(out), "--quiet"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    # --overwrite starts afresh: the dm checkpoint in the default work folder must not block another method
    again = ["condense", str(src), "--method", "dc", "--ipc", "1", "--out", str(out), "--iterations", "1"]
    assert main([*again, "--width", "8", "--eval-runs", "0", "--overwrite", "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["method"] == "dc"


def test_cli_bad_inputs_get_one_line_errors(tmp_path, capsys):
    from selector.cli import main

    one = _image_folder(tmp_path / "one", classes=("only",))
    assert main(["condense", str(one), "--ipc", "1", "--out", str(tmp_path / "o1"), "--quiet"]) == 2
    assert "at least two classes" in capsys.readouterr().err

    src = _image_folder(tmp_path / "src", n=4)
    assert main(["condense", str(src), "--ipc", "5", "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--ipc 5 is larger than class" in err and "'bag'" in err

    assert main(["condense", str(src), "--method", "dm", "--inner-loop", "3", "--out", str(tmp_path / "o3")]) == 2
    assert "--inner-loop do(es) not apply to --method dm" in capsys.readouterr().err

    # an image folder has no test split: evaluating on "--eval-split test" would silently test on training images
    assert main(["condense", str(src), "--eval-split", "test", "--ipc", "1", "--out", str(tmp_path / "o5")]) == 2
    assert "--eval-source" in capsys.readouterr().err

    broken = tmp_path / "broken"
    for name in ("a", "b"):
        (broken / name).mkdir(parents=True)
        (broken / name / "x.png").write_bytes(b"garbage")
    assert main(["condense", str(broken), "--ipc", "1", "--out", str(tmp_path / "o4"), "--quiet"]) == 2
    assert "no usable images" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o4")
