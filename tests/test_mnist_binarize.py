"""Dynamically binarised MNIST: fresh 0/1 draws for training batches, fixed draws for validation/test."""

import torch

from datamodules import MNISTDataModule


def datamodule(mnist_root, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, normalize=False, binarize=True, **kwargs)
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_training_batches_are_fresh_bernoulli_draws_of_the_grey_levels(mnist_root):
    dm = datamodule(mnist_root, augment=False)
    grey = dm.splits["train"].images[:200]
    first, second = dm.transform(grey, train=True), dm.transform(grey, train=True)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)  # a new draw for every batch
    # each pixel is 1 with probability its grey level: the means agree over 200 x 784 draws
    assert abs(first.mean().item() - (grey.float() / 255).mean().item()) < 0.002


def test_validation_and_test_images_are_drawn_once_from_the_data_seed(mnist_root):
    dm, again, other_seed = datamodule(mnist_root), datamodule(mnist_root), datamodule(mnist_root, data_seed=1)
    for split in ("val", "test"):
        images = dm.splits[split].images
        assert set(images.unique().tolist()) == {0, 255}
        assert torch.equal(dm.transform(images, train=False), dm.transform(images, train=False))
    assert torch.equal(dm.splits["test"].images, again.splits["test"].images)
    assert not torch.equal(dm.splits["test"].images, other_seed.splits["test"].images)
    dm.setup("test")  # a second setup must not draw again from the already binary images
    assert torch.equal(dm.splits["test"].images, again.splits["test"].images)


def test_binarize_is_off_by_default(mnist_root):
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, normalize=False)
    dm.setup("test")
    assert len(dm.splits["test"].images.unique()) > 2
