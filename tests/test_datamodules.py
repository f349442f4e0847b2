"""DataModules: loading through torchvision, splits, augmentation invariants, anomaly filtering, errors."""

import pytest
import torch
from conftest import CIFAR_PER_BATCH, CIFAR_TEST, MNIST_TEST, MNIST_TRAIN, make_mnist, synthetic_images

from cnnlab.errors import CnnlabError
from datamodules import CIFAR10DataModule, MNISTDataModule
from datamodules.cifar10 import random_crop


def first_batch(dm, split: str = "train"):
    loader = getattr(dm, f"{split}_dataloader")()
    return next(iter(loader))


def test_mnist_loads_uint8_splits_and_normalised_float_batches(mnist_root):
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, batch_size=32)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.splits["train"]) == MNIST_TRAIN - 100
    assert len(dm.splits["val"]) == 100
    assert len(dm.splits["test"]) == MNIST_TEST
    assert dm.splits["train"].images.dtype == torch.uint8
    # the test split holds exactly the digits written to the t10k files (conftest's seed 1), in file order
    written, written_labels = synthetic_images(MNIST_TEST, 28, 1, seed=1)
    assert torch.equal(dm.splits["test"].images, torch.from_numpy(written).permute(0, 3, 1, 2))
    assert torch.equal(dm.splits["test"].labels, torch.from_numpy(written_labels).long())
    images, labels = first_batch(dm)
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.max() <= 9
    x = dm.transform(images, train=False)
    assert x.dtype == torch.float32
    # standardised: pixel 0 maps to -mean/std, pixel 255 to (1-mean)/std
    assert x.min() >= -0.1307 / 0.3081 - 1e-5 and x.max() <= (1 - 0.1307) / 0.3081 + 1e-5
    assert torch.allclose(dm.denormalize(x), images.float() / 255, atol=1e-5)


def test_mnist_unpacks_gzipped_raw_files(tmp_path):
    root = make_mnist(tmp_path, compress=True)
    dm = MNISTDataModule(data_dir=str(root), val_size=100, download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.splits["train"]) == MNIST_TRAIN - 100


def test_mnist_unpacking_survives_another_process_unpacking_the_same_folder(tmp_path, monkeypatch):
    """Seed workers or DDP ranks on a fresh data folder unpack it at once: here a second unpack of
    the same folder runs (and finishes) in the middle of the first one's copy."""
    import shutil

    root = make_mnist(tmp_path, compress=True)
    copy = shutil.copyfileobj
    interrupted = []

    def copy_while_another_unpacks(src, dst, *args):
        if not interrupted:
            interrupted.append(True)
            MNISTDataModule(data_dir=str(root), download=False)._unpack_gzipped()
        copy(src, dst, *args)

    monkeypatch.setattr(shutil, "copyfileobj", copy_while_another_unpacks)
    dm = MNISTDataModule(data_dir=str(root), val_size=100, download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert interrupted and len(dm.splits["train"]) == MNIST_TRAIN - 100
    assert not list((root / "MNIST" / "raw").glob("*.part"))


def test_corrupt_gzipped_mnist_is_named_and_leaves_no_part_file(tmp_path):
    root = make_mnist(tmp_path, compress=True)
    packed = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:200])
    dm = MNISTDataModule(data_dir=str(root), download=False)
    with pytest.raises(CnnlabError, match=r"train-images-idx3-ubyte\.gz is corrupt or truncated"):
        dm.prepare_data()
    assert not list((root / "MNIST" / "raw").glob("*.part"))


def test_cifar10_loads_pickled_batches_through_torchvision(cifar_root):
    dm = CIFAR10DataModule(data_dir=str(cifar_root), val_size=50, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.splits["train"]) == 5 * CIFAR_PER_BATCH - 50
    assert len(dm.splits["test"]) == CIFAR_TEST
    # pixels and channels as written into test_batch (conftest's seed 15: R, G, B planes)
    written, written_labels = synthetic_images(CIFAR_TEST, 32, 3, seed=15)
    assert torch.equal(dm.splits["test"].images, torch.from_numpy(written).permute(0, 3, 1, 2))
    assert torch.equal(dm.splits["test"].labels, torch.from_numpy(written_labels).long())
    images, _ = first_batch(dm)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
    x = dm.transform(images, train=True)
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32


def test_split_is_fixed_by_data_seed(mnist_root):
    def split(seed):
        dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, data_seed=seed)
        dm.setup("fit")
        return dm.splits["val"].images

    assert torch.equal(split(3), split(3))
    assert not torch.equal(split(3), split(4))


def test_model_seed_does_not_move_the_split(mnist_root):
    def split(model_seed):
        torch.manual_seed(model_seed)  # what seed_everything does for a run
        dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, data_seed=0)
        dm.setup("fit")
        return dm.splits["val"].labels, dm.splits["train"].labels

    for a, b in zip(split(1), split(2), strict=True):
        assert torch.equal(a, b)


def asymmetric_batch(n: int = 64) -> torch.Tensor:
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 4:24, 6:10] = 1.0  # a thick vertical stroke near the left edge
    x[:, :, 4:8, 6:20] = 1.0  # and a top bar going right: a "7" turned around
    return x


def test_mnist_is_never_flipped(mnist_root):
    torch.manual_seed(0)
    dm = MNISTDataModule(data_dir=str(mnist_root))
    x = asymmetric_batch()
    augmented = dm.augment_batch(x)
    mirrored = x.flip(3)
    same = (augmented * x).flatten(1).sum(1)
    flipped = (augmented * mirrored).flatten(1).sum(1)
    assert (same > flipped).all(), "some augmented digits look more like their mirror image"
    assert not torch.allclose(augmented, x), "augmentation did nothing"


def test_mnist_augmentation_keeps_digits_recognisable(mnist_root):
    torch.manual_seed(0)
    dm = MNISTDataModule(data_dir=str(mnist_root), max_rotation=10, max_shift=2)
    x = asymmetric_batch(256)
    augmented = dm.augment_batch(x)
    # small rotations/shifts keep most of the ink where it was
    overlap = (augmented * x).flatten(1).sum(1) / x.flatten(1).sum(1)
    assert overlap.min() > 0.3
    assert (augmented.flatten(1).sum(1) / x.flatten(1).sum(1)).sub(1).abs().max() < 0.25


def test_mnist_scale_augmentation_changes_digit_sizes_within_its_range(mnist_root):
    torch.manual_seed(0)
    square = torch.zeros(1, 1, 28, 28)
    square[..., 10:18, 10:18] = 1  # 64 pixels of ink, well inside the frame
    dm = MNISTDataModule(data_dir=str(mnist_root), max_rotation=0, max_shift=0, max_scale=0.2)
    ink = dm.augment_batch(square.repeat(400, 1, 1, 1)).flatten(1).sum(1) / 64
    # sizes 80-120%: ink areas 0.64-1.44 of the original (a pixel of interpolation at the edges aside)
    assert ink.min() > 0.64 - 0.1 and ink.max() < 1.44 + 0.1
    assert ink.min() < 0.75 and ink.max() > 1.3  # both ends of the range drawn
    with pytest.raises(CnnlabError, match="max_scale"):
        MNISTDataModule(data_dir=str(mnist_root), max_scale=1.5)


def test_cifar_crop_keeps_shape_and_shifts_content():
    torch.manual_seed(0)
    x = torch.rand(32, 3, 32, 32)
    out = random_crop(x, padding=4)
    assert out.shape == x.shape
    for i in range(len(x)):  # each output is the input shifted by some (dy, dx) in [-4, 4]^2
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        windows = [padded[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_cifar_flips_some_images_left_right(cifar_root):
    torch.manual_seed(0)
    dm = CIFAR10DataModule(data_dir=str(cifar_root), crop_padding=0)
    x = torch.rand(64, 3, 32, 32)
    out = dm.augment_batch(x)
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54


def test_augment_false_is_the_identity(mnist_root):
    dm = MNISTDataModule(data_dir=str(mnist_root), augment=False)
    images = (asymmetric_batch() * 255).to(torch.uint8)
    assert torch.equal(dm.transform(images, train=True), dm.transform(images, train=False))


def test_only_training_batches_are_augmented(mnist_root):
    class FakeTrainer:
        training = False

    dm = MNISTDataModule(data_dir=str(mnist_root))
    dm.trainer = FakeTrainer()
    images = (asymmetric_batch() * 255).to(torch.uint8)
    labels = torch.zeros(len(images), dtype=torch.long)
    evaluated, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(evaluated, dm.transform(images, train=False))
    FakeTrainer.training = True
    trained, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert not torch.equal(trained, evaluated)


def test_normal_classes_filter_train_but_not_val_or_test(mnist_root):
    """Training keeps the normal classes only; validation (held-out training images) keeps every class
    in its share of the split, so an anomaly run has a validation AUROC to choose settings with."""
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, normal_classes=[1, 7])
    dm.setup("fit")
    dm.setup("test")
    assert set(dm.splits["train"].labels.unique().tolist()) == {1, 7}
    unfiltered = MNISTDataModule(data_dir=str(mnist_root), val_size=100)
    unfiltered.setup("fit")
    assert torch.equal(dm.splits["val"].labels, unfiltered.splits["val"].labels)  # the same 100, every class
    assert torch.equal(dm.splits["val"].images, unfiltered.splits["val"].images)
    assert set(dm.splits["val"].labels.unique().tolist()) == set(range(10))
    test_labels = dm.splits["test"].labels
    assert set(test_labels.unique().tolist()) == set(range(10))
    anomalous = dm.is_anomaly(test_labels)
    assert torch.equal(anomalous, ~((test_labels == 1) | (test_labels == 7)))


def test_sample_caps_shrink_every_split(mnist_root):
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, max_train_samples=64, max_eval_samples=30)
    dm.setup("fit")
    dm.setup("test")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [64, 30, 30]


@pytest.mark.parametrize(
    ("classes", "says"),
    [
        ([], r"normal_classes is \[\], which names no normal class"),
        ([3, 10], r"normal_classes has \[10\], but MNIST classes are 0\.\.9"),
        (list(range(10)), r"lists every MNIST class \(0\.\.9\), so no test sample is an anomaly"),
    ],
    ids=["empty", "out-of-range", "every-class"],
)
def test_normal_classes_an_anomaly_run_cannot_use_are_refused(classes, says):
    with pytest.raises(CnnlabError, match=says):
        MNISTDataModule(normal_classes=classes)
    # a list that leaves one class as the anomaly is a run
    dm = MNISTDataModule(normal_classes=list(range(9)))
    assert torch.equal(dm.is_anomaly(torch.arange(10)), torch.arange(10) == 9)


def test_each_stage_asks_only_for_the_files_of_the_splits_it_reads(mnist_root, tmp_path):
    import types

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes((mnist_root / "MNIST" / "raw" / name).read_bytes())

    def prepared(stage: str | None, **settings) -> MNISTDataModule:
        dm = MNISTDataModule(data_dir=str(tmp_path), download=False, val_size=100, **settings)
        dm.trainer = None if stage is None else types.SimpleNamespace(state=types.SimpleNamespace(fn=stage))
        dm.prepare_data()
        return dm

    for stage in ("test", "predict"):
        dm = prepared(stage)
        dm.setup(stage)
        assert len(dm.samples("test")[1]) == MNIST_TEST and "train" not in dm.splits
    for stage, settings in (("fit", {}), ("validate", {}), ("predict", {"predict_split": "val"}), (None, {})):
        with pytest.raises(CnnlabError) as info:
            prepared(stage, **settings)
        assert f"in {raw}/: missing train-images-idx3-ubyte, train-labels-idx1-ubyte (" in str(info.value)
        assert "t10k" not in str(info.value), stage


def test_mnist_scenes_test_needs_only_the_test_digits(mnist_root, tmp_path):
    import types

    from datamodules import MNISTScenesDataModule

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes((mnist_root / "MNIST" / "raw" / name).read_bytes())
    dm = MNISTScenesDataModule(data_dir=str(tmp_path), download=False, val_size=100, test_scenes=7)
    dm.trainer = types.SimpleNamespace(state=types.SimpleNamespace(fn="test"))
    dm.prepare_data()
    dm.setup("test")
    images, masks = dm.samples("test")
    assert images.shape == (7, 1, 64, 64) and masks.max() > 0  # scenes with digits in them
    dm.trainer.state.fn = "fit"
    with pytest.raises(CnnlabError, match="missing train-images-idx3-ubyte, train-labels-idx1-ubyte"):
        dm.prepare_data()


def test_missing_mnist_says_where_it_looked_and_what_to_do(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(CnnlabError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    # without a trainer, both splits: every file, by name
    missing = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
    assert f"missing {missing} (" in message and "--data.data_dir" in message
    assert "\n" not in message


def test_truncated_mnist_file_is_named(tmp_path):
    root = make_mnist(tmp_path)
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:100])
    dm = MNISTDataModule(data_dir=str(root), val_size=10)
    with pytest.raises(CnnlabError, match="train-labels-idx1-ubyte is corrupt or truncated"):
        dm.setup("fit")


def test_corrupt_cifar_file_is_named(cifar_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(cifar_root, root)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])
    dm = CIFAR10DataModule(data_dir=str(root), val_size=10)
    with pytest.raises(CnnlabError, match="data_batch_3 is corrupt or truncated"):
        dm.setup("fit")


def test_missing_cifar_offline_is_one_clear_paragraph(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(CnnlabError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert f"CIFAR-10 was not found in {tmp_path / 'cifar-10-batches-py'}/" in message
    names = ", ".join([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])
    assert f"missing {names} (" in message and "download is off" in message
    assert "\n" not in message
