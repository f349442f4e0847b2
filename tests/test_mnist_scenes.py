"""Digit scenes for segmentation: exact masks, determinism from data_seed, split hygiene; and the
noise of denoising runs: fixed per evaluation image, of the requested strength."""

import numpy as np
import pytest
import torch
from conftest import write_idx

from cnnlab.errors import CnnlabError
from datamodules import MNISTDataModule, MNISTScenesDataModule
from datamodules.mnist_scenes import EpochSampler, FreshScenes, SceneLayout, SceneSpec, render_scenes, scale_digits
from datamodules.noise import add_noise, fixed_noisy_copy

pytestmark = pytest.mark.usefixtures("one_thread")


def scenes(root, **kwargs) -> MNISTScenesDataModule:
    settings = {"val_size": 100, "train_scenes": 40, "val_scenes": 10, "test_scenes": 20, "batch_size": 8}
    dm = MNISTScenesDataModule(data_dir=str(root), **{**settings, **kwargs})
    dm.prepare_data()
    return dm


def test_mask_is_where_each_digit_reaches_the_threshold_and_the_later_digit_wins():
    # two digits with a ramp of intensities, overlapping; a third, scaled, alone in another scene
    ramp = torch.arange(28 * 28).view(28, 28) % 256
    digits = torch.stack([ramp, ramp.flip(1), ramp.T.contiguous()]).to(torch.uint8)
    labels = torch.tensor([2, 5, 9])
    layout = SceneLayout(
        scene=np.array([0, 0, 1]),
        source=np.array([0, 1, 2]),
        size=np.array([28, 28, 20]),
        top=np.array([0, 10, 3]),
        left=np.array([0, 6, 18]),
    )
    images, masks = render_scenes(digits, labels, layout, n_scenes=2, canvas=40, threshold=128)

    expected_image = np.zeros((2, 40, 40), np.uint8)
    expected_mask = np.zeros((2, 40, 40), np.uint8)
    scaled = scale_digits(digits[torch.tensor([0, 1, 2])], layout.size)
    for j in range(3):  # drawing order
        s, top, left, side = layout.scene[j], layout.top[j], layout.left[j], layout.size[j]
        for y in range(side):
            for x in range(side):
                value = int(scaled[j][y, x])
                expected_image[s, top + y, left + x] = max(expected_image[s, top + y, left + x], value)
                if value >= 128:
                    expected_mask[s, top + y, left + x] = labels[j] + 1
    assert np.array_equal(images, expected_image)
    assert np.array_equal(masks, expected_mask)
    # unscaled digits are pasted unchanged; class values are label + 1; the overlap went to the 5
    assert np.array_equal(scaled[0], digits[0].numpy())
    assert set(np.unique(masks[0])) == {0, 3, 6} and set(np.unique(masks[1])) == {0, 10}
    assert masks[0, 10 + 27, 6 + 27] == 6 and masks[0, 27, 27] in (3, 6)


def test_scene_foreground_is_exactly_the_bright_pixels(mnist_root):
    dm = scenes(mnist_root)
    dm.setup("fit")
    images, masks = dm.splits["train"].images[:, 0], dm.splits["train"].labels
    assert images.shape == (40, 64, 64) and masks.shape == (40, 64, 64) and masks.dtype == torch.uint8
    assert torch.equal(masks > 0, images >= 128)
    assert int(masks.max()) <= 10
    for mask in masks:  # at most max_digits distinct digit classes in a scene, at least one
        assert 1 <= len(mask.unique()) - 1 <= 4


def test_scenes_are_fixed_by_data_seed(mnist_root):
    def train_scenes(data_seed, model_seed):
        torch.manual_seed(model_seed)  # what seed_everything does for a run
        dm = scenes(mnist_root, data_seed=data_seed)
        dm.setup("fit")
        return dm.splits["train"].images, dm.splits["train"].labels

    first, again, other_model_seed = train_scenes(0, 1), train_scenes(0, 1), train_scenes(0, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first, other_model_seed, strict=True))
    assert not torch.equal(first[0], train_scenes(1, 1)[0])


def test_train_scenes_use_training_digits_and_test_scenes_test_digits(tmp_path):
    # training digits are all 0-4 and test digits all 5-9: masks give away where a digit came from
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, classes in (("train", range(0, 5)), ("t10k", range(5, 10))):
        images = np.zeros((300, 28, 28), np.uint8)
        images[:, 6:22, 10:18] = rng.integers(150, 256, size=(300, 16, 8))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.resize(np.array(list(classes)), 300))
    dm = scenes(tmp_path)
    dm.setup("fit")
    dm.setup("test")
    for split in ("train", "val"):
        assert set(dm.splits[split].labels.unique().tolist()) == {0, 1, 2, 3, 4, 5}
    assert set(dm.splits["test"].labels.unique().tolist()) == {0, 6, 7, 8, 9, 10}


def test_clutter_adds_ink_but_no_labels(mnist_root):
    plain, cluttered = scenes(mnist_root), scenes(mnist_root, clutter=3)
    plain.setup("fit")
    cluttered.setup("fit")
    assert torch.equal(plain.splits["train"].labels, cluttered.splits["train"].labels)
    extra = cluttered.splits["train"].images.int() - plain.splits["train"].images.int()
    assert extra.min() >= 0 and extra.sum() > 0


def test_scene_batches_are_images_and_int64_masks(mnist_root):
    dm = scenes(mnist_root)
    dm.setup("fit")
    images, masks = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.shape == (8, 1, 64, 64) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert masks.shape == (8, 64, 64) and masks.dtype == torch.int64
    assert dm.image_shape == (1, 64, 64) and dm.num_classes == 11 and dm.class_names[1] == "0"


# -- training scenes drawn anew each epoch (augment) ------------------------------------------


def fresh(mnist_root, n_scenes=12, seed=7, **spec) -> FreshScenes:
    dm = scenes(mnist_root)
    digits, labels = dm.load_split(train=True)
    spec = SceneSpec(**{"canvas": 64, "digits": (1, 4), "sizes": (21, 35), "threshold": 128, **spec})
    return FreshScenes(spec, digits[:, 0], labels, n_scenes, seed)


def test_a_fresh_scene_depends_on_its_epoch_and_index_only(mnist_root):
    train = fresh(mnist_root)
    batch = train.__getitems__([3, 4, 5, 12 + 3])  # scenes 3-5 of epoch 0, scene 3 of epoch 1
    alone = [train[i] for i in (3, 4, 5, 12 + 3)]
    for k, (image, mask) in enumerate(alone):  # rendered in a batch or alone: the same scene
        assert torch.equal(batch[0][k], image) and torch.equal(batch[1][k], mask)
    assert not torch.equal(batch[0][0], batch[0][3])  # scene 3 differs between epochs
    again = fresh(mnist_root).__getitems__([3, 4, 5, 15])
    assert all(torch.equal(a, b) for a, b in zip(batch, again, strict=True))
    other_seed = fresh(mnist_root, seed=8).__getitems__([3, 4, 5, 15])
    assert not torch.equal(batch[0], other_seed[0])


def test_fresh_scenes_keep_the_scene_rules(mnist_root):
    images, masks = fresh(mnist_root, n_scenes=30).__getitems__(list(range(30, 60)))
    assert images.shape == (30, 1, 64, 64) and images.dtype == torch.uint8
    assert masks.shape == (30, 64, 64) and masks.dtype == torch.uint8
    assert torch.equal(masks > 0, images[:, 0] >= 128)  # foreground exactly where the ink is
    for mask in masks:
        assert 1 <= len(mask.unique()) - 1 <= 4 and int(mask.max()) <= 10
    cluttered, same_masks = fresh(mnist_root, n_scenes=30, clutter=3).__getitems__(list(range(30, 60)))
    assert torch.equal(same_masks, masks)  # clutter adds ink, never labels
    extra = cluttered.int() - images.int()
    assert extra.min() >= 0 and extra.sum() > 0


def test_epoch_sampler_gives_each_rank_its_share_of_the_epoch():
    train = FreshScenes(SceneSpec(64, (1, 4), (21, 35), 128), torch.zeros(1, 28, 28), torch.zeros(1), 10, 0)
    ranks = [EpochSampler(train, num_replicas=3, rank=r) for r in range(3)]
    for sampler in ranks:
        sampler.set_epoch(2)
    shares = [list(sampler) for sampler in ranks]
    assert [len(share) for share in shares] == [4, 4, 4] == [len(sampler) for sampler in ranks]
    assert set().union(*shares) == set(range(20, 30))  # all ten scenes of epoch 2, two repeated to even up
    single = EpochSampler(train)
    assert list(single) == list(range(10))
    single.set_epoch(1)
    assert list(single) == list(range(10, 20))


def test_augment_draws_new_training_scenes_each_epoch_from_the_model_seed(mnist_root, tmp_path):
    from lightning.pytorch import Callback, Trainer, seed_everything

    from lightning_modules import UNetModule

    class FirstBatches(Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.seen.append(batch[1].clone())

    def fit(augment: bool, seed: int) -> tuple[list[torch.Tensor], MNISTScenesDataModule]:
        seed_everything(seed)
        record, dm = FirstBatches(), scenes(mnist_root, augment=augment)
        trainer = Trainer(
            max_epochs=2, logger=False, callbacks=[record], enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
            limit_train_batches=1, limit_val_batches=0,
        )  # fmt: skip
        trainer.fit(UNetModule(depth=1, base_channels=4), datamodule=dm)
        return record.seen, dm

    def drawn_once(masks: torch.Tensor, dm: MNISTScenesDataModule) -> bool:
        fixed = dm.splits["train"].labels.long()
        return all((fixed == mask).flatten(1).all(1).any() for mask in masks)

    (first, dm), (again, _), (other, _) = fit(True, 0), fit(True, 0), fit(True, 1)
    assert not torch.equal(first[0], first[1])  # epoch 1 trains on other scenes than epoch 0
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert not any(drawn_once(masks, dm) for masks in first)
    fixed, dm = fit(False, 0)  # augment off: every epoch from the scenes drawn once
    assert all(drawn_once(masks, dm) for masks in fixed)


def test_bad_scene_settings_are_one_paragraph():
    with pytest.raises(CnnlabError, match=r"max_scale=3\.0"):
        MNISTScenesDataModule(max_scale=3.0)
    with pytest.raises(CnnlabError, match="min_digits=3, max_digits=2"):
        MNISTScenesDataModule(min_digits=3, max_digits=2)


# -- noise of denoising runs ------------------------------------------------------------------


def test_eval_noise_is_drawn_once_per_image_from_the_data_seed(mnist_root):
    """The evaluation noise is fixed when the split is set up: the same image gets the same noise in
    every epoch, batch size and order, and another data seed gives other noise."""

    def noisy_val(batch_size: int, data_seed: int = 0) -> torch.Tensor:
        dm = MNISTDataModule(
            data_dir=str(mnist_root), val_size=100, normalize=False, noise="gaussian", noise_level=0.3,
            eval_batch_size=batch_size, data_seed=data_seed,
        )  # fmt: skip
        dm.setup("fit")
        return torch.cat([dm.on_after_batch_transfer(b, 0)[0] for b in dm.val_dataloader()])

    first = noisy_val(7)
    assert torch.equal(first, noisy_val(50))  # batching does not matter
    assert not torch.equal(first, noisy_val(50, data_seed=1))
    assert first.shape == (100, 1, 28, 28)


def test_training_noise_follows_the_model_seed():
    clean = torch.full((2, 1, 8, 8), 0.5)
    draws = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        draws.append(add_noise(clean, "salt_and_pepper", 0.3))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


@pytest.mark.parametrize("fixed", [False, True])
def test_gaussian_noise_has_the_requested_std(fixed):
    clean = torch.full((64, 1, 32, 32), 0.5)
    if fixed:  # drawn once into uint8 images, as evaluation splits are
        noise = fixed_noisy_copy((clean * 255).round().to(torch.uint8), "gaussian", 0.1, seed=0).float() / 255 - clean
    else:
        noise = add_noise(clean, "gaussian", 0.1) - clean
    assert abs(noise.mean().item()) < 0.003 and noise.std().item() == pytest.approx(0.1, rel=0.02)


@pytest.mark.parametrize("fixed", [False, True])
def test_salt_and_pepper_hits_the_requested_fraction_of_pixels_in_all_channels(fixed):
    clean = torch.full((64, 3, 32, 32), 0.5)
    if fixed:
        stored = fixed_noisy_copy(torch.full((64, 3, 32, 32), 128, dtype=torch.uint8), "salt_and_pepper", 0.2, seed=0)
        noisy = torch.where(stored == 128, 0.5, stored.float() / 255)
    else:
        noisy = add_noise(clean, "salt_and_pepper", 0.2)
    hit = noisy != 0.5
    assert torch.equal(hit.all(1), hit.any(1))  # a hit pixel is hit in every channel
    assert hit[:, 0].float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert (noisy == 1).float().mean().item() == pytest.approx(0.1, abs=0.01)


def test_denoising_batches_are_noisy_and_clean_pairs_fixed_outside_training(mnist_root):
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, normalize=False, noise="gaussian", noise_level=0.3)
    dm.setup("fit")
    raw = next(iter(dm.val_dataloader()))
    images, _ = dm.samples("val")
    assert torch.equal(raw[1], images[: len(raw[1])])  # the loader carries the clean images as targets
    noisy, clean = dm.on_after_batch_transfer(raw, 0)
    assert torch.equal(clean, images[: len(raw[1])].float() / 255)
    assert noisy.shape == clean.shape and noisy.min() >= 0 and noisy.max() <= 1
    assert (noisy - clean).abs().mean() > 0.1
    assert torch.equal(noisy, dm.on_after_batch_transfer(raw, 0)[0])


def test_noise_on_standardised_pixels_is_refused():
    with pytest.raises(CnnlabError, match=r"data\.normalize false"):
        MNISTDataModule(noise="gaussian")
    with pytest.raises(CnnlabError, match="between 0 and 1"):
        MNISTDataModule(noise="salt_and_pepper", noise_level=1.5, normalize=False)
