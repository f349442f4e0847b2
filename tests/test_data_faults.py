"""Data that is partly there or cannot make an anomaly run: test and predict need the test files
only; a missing file is named, with the folder it was looked for in; normal classes that name none,
name a class the dataset lacks or name every class are refused in one paragraph; and a test split
with one kind of sample reports its AUROC as undefined instead of leaving it out."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import (
    MNIST_TEST,
    last_evaluation,
    make_mnist,
    only_run,
    summary_of,
    synthetic_images,
    tiny_cli_args,
    write_idx,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def refused(run_cli, subcommand: str, args: list[str], capsys) -> str:
    """Run a command that must be refused: exit 2, one paragraph, no traceback. Returns the paragraph
    (copied from test_faults.py; here it also checks the paragraph is one line)."""
    with pytest.raises(SystemExit) as info:
        run_cli(subcommand, args)
    err = capsys.readouterr().err
    assert info.value.code == 2, err[-2000:]
    assert "cnnlab: error:" in err and "Traceback" not in err, err[-2000:]
    paragraph = err.split("cnnlab: error:", 1)[1].split("\n(set CNNLAB_DEBUG=1", 1)[0].strip()
    assert "\n" not in paragraph, paragraph
    return paragraph


def mnist_with_only(root: Path, names: tuple[str, ...], source: Path, compress: bool = False) -> Path:
    """A data folder holding only `names` of the complete tiny MNIST at `source` (each .gz-packed
    when `compress`, as MNIST is distributed)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in names:
        data = (source / "MNIST" / "raw" / name).read_bytes()
        if compress:
            import gzip

            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def trained_classifier(mnist_root, tmp_path_factory):
    """The tiny classifier fitted on the complete tiny MNIST, and the record of its test there."""
    import sys

    from cnnlab.cli import main

    out = tmp_path_factory.mktemp("complete")
    args = tiny_cli_args("mnist_classifier", mnist_root, out / "runs", "--seed_everything=3")
    argv = sys.argv
    sys.argv = ["train.py"]
    try:
        torch.manual_seed(0)
        main(["fit", *args])
        run = only_run(out)
        best = summary_of(run)["best_checkpoint"]
        main(["test", *args, f"--ckpt_path={best}"])
    finally:
        sys.argv = argv
    return best, summary_of(last_evaluation(run, "test"))


# -- test and predict read the test split only ---------------------------------------------------


def test_test_and_predict_of_a_checkpoint_need_only_the_two_test_files(
    run_cli, mnist_root, trained_classifier, tmp_path
):
    best, complete = trained_classifier
    # the two t10k files as MNIST ships them (.gz), no training file at all
    only_test = mnist_with_only(tmp_path / "data", TEST_FILES, mnist_root, compress=True)
    args = tiny_cli_args("mnist_classifier", only_test, tmp_path / "runs", "--data.download=false")
    run_cli("test", [*args, f"--ckpt_path={best}"])
    run_cli("predict", [*args, f"--ckpt_path={best}"])
    run = Path(best).parents[1]
    tested = summary_of(last_evaluation(run, "test"))
    # the same checkpoint on the same test digits: the same numbers as with all four files there
    assert tested["data"]["fingerprint"] == complete["data"]["fingerprint"]
    assert tested["data"]["size"] == MNIST_TEST and tested["data"]["data_dir"] == str(only_test.resolve())
    assert tested["metrics"]["test/acc"] == pytest.approx(complete["metrics"]["test/acc"], abs=1e-6)
    assert tested["metrics"]["test/loss"] == pytest.approx(complete["metrics"]["test/loss"], rel=1e-5)
    predicted = torch.load(last_evaluation(run, "predict") / "predictions.pt")
    assert torch.equal(predicted["label"].sort().values, torch.arange(10).repeat_interleave(MNIST_TEST // 10))
    assert sorted(p.name for p in (only_test / "MNIST" / "raw").iterdir() if not p.name.endswith(".gz")) == sorted(
        TEST_FILES
    )  # nothing was downloaded or made up for the training split


def test_fit_without_the_training_files_names_exactly_those_and_the_folder(run_cli, mnist_root, tmp_path, capsys):
    only_test = mnist_with_only(tmp_path / "data", TEST_FILES, mnist_root)
    args = tiny_cli_args("mnist_classifier", only_test, tmp_path / "runs", "--data.download=false")
    message = refused(run_cli, "fit", args, capsys)
    assert f"{only_test / 'MNIST' / 'raw'}/" in message
    assert "missing train-images-idx3-ubyte, train-labels-idx1-ubyte (" in message
    assert "t10k" not in message  # the test files are there and fit does not read them
    assert "download is off" in message


def test_test_with_one_test_file_missing_names_that_file_only(run_cli, mnist_root, tmp_path, capsys):
    data = mnist_with_only(tmp_path / "data", (*TRAIN_FILES, TEST_FILES[0]), mnist_root)
    args = tiny_cli_args("mnist_classifier", data, tmp_path / "runs", "--data.download=false")
    message = refused(run_cli, "test", args, capsys)
    assert "missing t10k-labels-idx1-ubyte (" in message and "the test split (test and predict" in message
    assert "t10k-images" not in message and "train-" not in message


def test_predict_on_the_validation_split_needs_the_training_files(run_cli, mnist_root, tmp_path, capsys):
    only_test = mnist_with_only(tmp_path / "data", TEST_FILES, mnist_root)
    args = tiny_cli_args("mnist_classifier", only_test, tmp_path / "runs", "--data.download=false")
    message = refused(run_cli, "predict", [*args, "--data.predict_split=val"], capsys)
    assert "missing train-images-idx3-ubyte, train-labels-idx1-ubyte (" in message


def test_cifar10_test_needs_only_the_test_batch(run_cli, cifar_root, tmp_path, capsys):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    shutil.copy(cifar_root / "cifar-10-batches-py" / "test_batch", folder)
    args = tiny_cli_args("cifar10_classifier", tmp_path / "data", tmp_path / "runs", "--data.download=false")
    run_cli("test", args)  # fresh weights: what matters is that the split is read
    tested = summary_of(next((tmp_path / "runs" / "cifar10_classifier").glob("*-test")))
    assert tested["status"] == "finished" and tested["data"]["size"] == 100
    assert 0 <= tested["metrics"]["test/acc"] <= 1
    message = refused(run_cli, "fit", args, capsys)
    assert f"{folder}/" in message
    assert "missing data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5 (" in message
    assert "test_batch" not in message


def test_a_corrupt_cifar_test_batch_is_named_at_test(run_cli, cifar_root, tmp_path, capsys):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes((cifar_root / "cifar-10-batches-py" / "test_batch").read_bytes()[:-10])
    args = tiny_cli_args("cifar10_classifier", tmp_path / "data", tmp_path / "runs", "--data.download=false")
    message = refused(run_cli, "test", args, capsys)
    assert f"{folder / 'test_batch'} is corrupt or truncated" in message


# -- normal classes an anomaly run cannot use ------------------------------------------------------


@pytest.mark.parametrize(
    ("classes", "says"),
    [
        ("[]", "data.normal_classes is [], which names no normal class"),
        ("[3, 10]", "data.normal_classes has [10], but MNIST classes are 0..9"),
        ("[-1]", "data.normal_classes has [-1], but MNIST classes are 0..9"),
        ("[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", "lists every MNIST class (0..9), so no test sample is an anomaly"),
    ],
    ids=["empty", "ten", "negative", "all-ten"],
)
def test_unusable_normal_classes_are_refused_before_anything_trains(
    run_cli, mnist_root, tmp_path, capsys, classes, says
):
    args = tiny_cli_args("mnist_anomaly_ae", mnist_root, tmp_path / "runs", f"--data.normal_classes={classes}")
    message = refused(run_cli, "fit", args, capsys)
    assert says in message and "e.g. [0] or [1, 7]" in message
    assert not (tmp_path / "runs").exists()  # refused before a run directory, let alone a checkpoint


# -- a test split without anomalies: AUROC undefined, and said so ----------------------------------


def mnist_with_normal_test_digits(root: Path, normal: list[int]) -> Path:
    """The tiny MNIST, but its test split holds only the `normal` digits."""
    make_mnist(root)
    images, labels = synthetic_images(4 * MNIST_TEST, 28, 1, seed=1)
    keep = torch.isin(torch.from_numpy(labels).long(), torch.tensor(normal)).numpy()
    write_idx(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte", images[keep][:MNIST_TEST, ..., 0])
    write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels[keep][:MNIST_TEST])
    return root


def test_a_test_split_without_anomalies_records_auroc_as_undefined(run_cli, tmp_path, capsys):
    normal = [0, 1, 2, 3, 4]
    data = mnist_with_normal_test_digits(tmp_path / "data", normal)
    args = tiny_cli_args("mnist_classifier", data, tmp_path / "runs", f"--data.normal_classes={normal}")
    run_cli("fit", args)
    run = only_run(tmp_path)
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"AUROC is undefined: the test split's \d+ samples are all normal"):
        run_cli("test", [*args, "--ckpt_path=best"])
    tested = last_evaluation(run, "test")
    metrics = json.loads((tested / "summary.json").read_text())["metrics"]
    # in the record, beside the metrics the split does define: undefined, not missing
    for key in ("test/auroc", "test/auprc", "test/f1", "test/best_f1", "test/loss_auroc", "test/loss_recall"):
        assert math.isnan(metrics[key]), key
    assert math.isfinite(metrics["test/acc"])
    rows = (tested / "metrics.csv").read_text().splitlines()
    header, values = rows[0].split(","), rows[-1].split(",")
    assert values[header.index("test/auroc")] == "nan"
