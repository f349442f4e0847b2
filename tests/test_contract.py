"""The contract between cnnlab's parts (cnnlab/protocol.py) holds for every model, is checked before a
run starts, and the recipes of docs/design.md that extend it work as written: their code blocks are
run here, through the CLI, on the tiny data."""

import functools
import importlib
import inspect
import json
import pkgutil
import re
import sys
import textwrap
import types
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from conftest import ROOT, last_evaluation, only_run, synthetic_images, tiny_cli_args, write_idx
from lightning.pytorch import LightningModule, Trainer
from test_faults import refused

import lightning_modules
from callbacks import LatentSpaceScatter, LossHistogram
from cnnlab.errors import CnnlabError
from cnnlab.protocol import (
    AnomalyModel,
    EvaluationScores,
    FeatureMaps,
    FeaturesAndHead,
    PerSampleLoss,
    Predictions,
    check_configuration,
)
from datamodules import MNISTDataModule
from lightning_modules import AutoEncoder, GeoTrans, ImageClassifier
from lightning_modules.base import CnnlabModule
from networks.classifiers import BACKBONES, build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


# -- every LightningModule of lightning_modules/ ------------------------------------------------------


def lightning_module_classes() -> dict[str, type]:
    """Every LightningModule class defined in lightning_modules/, but the abstract base."""
    found = {}
    for info in pkgutil.iter_modules(lightning_modules.__path__):
        module = importlib.import_module(f"lightning_modules.{info.name}")
        for name, cls in vars(module).items():
            if inspect.isclass(cls) and issubclass(cls, LightningModule) and cls.__module__ == module.__name__:
                found[name] = cls
    found.pop(CnnlabModule.__name__)
    return found


# Tiny settings of each class, and the data it trains on. A class missing here fails the test below.
TINY = {
    "ImageClassifier": ({"backbone": "cnn", "width": 4}, {}),
    "AutoEncoder": ({"channels": (4, 8), "latent_dim": 3}, {"normalize": False}),
    "VAE": ({"channels": (4, 8), "latent_dim": 3}, {"normalize": False}),
    "DeepSVDD": ({"channels": (4, 8), "latent_dim": 3, "pretrain_epochs": 0}, {"normalize": False}),
    "GeoTrans": ({"backbone": "plain", "width": 4, "translations": "none", "rotations": 2}, {}),
    "UNetModule": ({"task": "denoise", "depth": 2, "base_channels": 4}, {"normalize": False, "noise": "gaussian"}),
}
CLASSES = lightning_module_classes()


def fitted(cls: type, mnist_root: Path, tmp_path: Path) -> tuple[LightningModule, MNISTDataModule, Trainer]:
    """A model of `cls` built from Python with a callable optimizer, after two training steps and a
    validation (which fits the anomaly models' yardsticks and k-NN banks)."""
    if cls.__name__ not in TINY:
        pytest.fail(f"{cls.__name__} is a LightningModule of lightning_modules/ with no tiny settings in TINY")
    settings, data = TINY[cls.__name__]
    torch.manual_seed(0)
    dm = MNISTDataModule(
        data_dir=str(mnist_root), val_size=40, batch_size=20, max_train_samples=100, augment=False, **data
    )
    model = cls(**settings, optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    trainer = Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, dm)
    return model, dm, trainer


def evaluation_batch(dm: MNISTDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The first validation batch as the model is fed it (denoising: noisy and clean images)."""
    return dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)


def seeded(fn, *args):
    """`fn(*args)` in eval mode with torch's RNG at seed 0 (the VAE draws a posterior sample)."""
    torch.manual_seed(0)
    with torch.no_grad():
        return fn(*args)


@pytest.mark.parametrize("cls", CLASSES.values(), ids=CLASSES.keys())
def test_every_model_built_in_python_loads_from_its_checkpoint_with_no_arguments(cls, mnist_root, tmp_path):
    """VAE and DeepSVDD checkpoints of a model given a Python optimizer (a partial) once failed to load
    (UnpicklingError): each subclass's own save_hyperparameters recorded the partial again."""
    model, dm, trainer = fitted(cls, mnist_root, tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path).eval()
    model.eval()
    assert "optimizer" not in loaded.hparams and dict(loaded.hparams) == dict(model.hparams)
    batch = evaluation_batch(dm)
    expected, got = seeded(model.per_sample_loss, batch), seeded(loaded.per_sample_loss, batch)
    assert expected.shape == (len(batch[0]),) and torch.equal(got, expected)
    # the predictions too: they read what the validation fitted (k-NN banks, Gaussians, Dirichlets, centre)
    expected, got = seeded(model.predict_step, batch, 0), seeded(loaded.predict_step, batch, 0)
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("cls", CLASSES.values(), ids=CLASSES.keys())
def test_every_model_keeps_the_protocol_it_promises(cls, mnist_root, tmp_path):
    model, dm, _ = fitted(cls, mnist_root, tmp_path)
    for capability in (PerSampleLoss, EvaluationScores, Predictions, FeatureMaps):
        assert isinstance(model, capability), capability.__name__
    batch = evaluation_batch(dm)
    predictions = seeded(model.eval().predict_step, batch, 0)
    assert isinstance(predictions, dict) and all(len(v) == len(batch[0]) for v in predictions.values())
    if callable(getattr(model, "anomaly_scores", None)):
        assert isinstance(model, AnomalyModel)
        # what score_names() promises (checked before a run starts) is what the scores are, once fitted
        scores = seeded(model.anomaly_scores, batch)
        assert set(scores) == set(model.score_names()) and model.primary_score in scores
        assert {f"score_{name}" for name in scores} <= set(predictions)


@pytest.mark.parametrize("name", BACKBONES)
def test_a_cnn_backbone_is_its_head_after_its_features(name):
    """GeoTrans takes the k-NN features of `features` and the logits of `head` (FeaturesAndHead)."""
    net = build_backbone(name, (1, 28, 28), 4, None, 0.0).eval()
    if name == "mlp":
        assert not isinstance(net, FeaturesAndHead)
        with pytest.raises(CnnlabError, match=r"but mlp has no features, head\. Use a convolutional backbone"):
            GeoTrans(backbone="mlp")
        return
    images = torch.rand(3, 1, 28, 28)
    assert isinstance(net, FeaturesAndHead)
    assert net.input_layer() is next(m for m in net.features.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        assert torch.equal(net.head(net.features(images)), net(images))


def test_a_module_outside_a_trainer_reads_no_private_lightning_member(mnist_root):
    """The module asked Lightning's private `_trainer` whether it runs in a trainer; the public
    `trainer` raises outside one, which the module must turn into 'no trainer'."""
    model = AutoEncoder(channels=(4,), latent_dim=2)
    batch = (torch.rand(4, 1, 28, 28), torch.arange(4))
    assert torch.isfinite(model.training_step(batch, 0))  # log_step outside a trainer
    assert model.running_trainer() is None
    with pytest.warns(UserWarning, match="knn anomaly score is fitted to the normal training images"):
        assert model.reads_training_images("knn") is False
    with pytest.raises(CnnlabError, match="no DataModule"):
        next(model.training_images())
    for path in [*ROOT.glob("*/*.py"), *ROOT.glob("*/*/*.py")]:
        if path.parts[-2] not in ("tests", ".venv", "benchmarks") and path.name != "lightning_internals.py":
            assert "._trainer" not in path.read_text(), f"{path} reads LightningModule._trainer (private)"


# -- the check before a run ------------------------------------------------------------------------------


def test_a_latent_figure_on_the_classifier_is_refused_before_any_run_directory(run_cli, tiny_args, tmp_path, capsys):
    paragraph = refused(run_cli, "fit", [*tiny_args, "--trainer.callbacks+=callbacks.LatentSpaceScatter"], capsys)
    assert "LatentSpaceScatter needs a model with a latent space, but ImageClassifier has no" in paragraph
    assert "encode (LatentModel)" in paragraph and "latent_dim (LatentModel)" in paragraph
    runs = tmp_path / "runs"
    assert not [p for p in runs.rglob("*") if p.is_file()] and not list(runs.glob("*/*"))  # no run directory


def test_a_primary_score_the_model_does_not_have_is_refused_at_instantiation(mnist_root):
    """Before, a primary score missing from the model's scores failed at the first validation."""
    data = MNISTDataModule(data_dir=str(mnist_root), normalize=False)
    knn_primary = type("KnnAutoEncoder", (AutoEncoder,), {"primary_score": "knn"})
    check_configuration(knn_primary(channels=(4,), latent_dim=2, knn_k=5), data, [LossHistogram()])
    with pytest.raises(CnnlabError, match=r"KnnAutoEncoder.primary_score is 'knn', but its anomaly scores are \["):
        check_configuration(knn_primary(channels=(4,), latent_dim=2, knn_k=0), data, [LossHistogram()])

    class Unnamed(ImageClassifier):
        primary_score = "loss"

        def anomaly_scores(self, batch):
            return {"loss": self.per_sample_loss(batch)}

    with pytest.raises(CnnlabError, match=r"Unnamed has anomaly_scores but no score_names \(AnomalyModel"):
        check_configuration(Unnamed(), data)


def test_the_configuration_check_subsumes_the_pairing_and_callback_checks(mnist_root):
    standardised = MNISTDataModule(data_dir=str(mnist_root))
    with pytest.raises(CnnlabError, match="Bernoulli likelihood"):
        check_configuration(AutoEncoder(channels=(4,), latent_dim=2), standardised, [])
    with pytest.raises(CnnlabError, match="LatentSpaceScatter needs a cnnlab DataModule"):
        check_configuration(AutoEncoder(channels=(4,), latent_dim=2), None, [LatentSpaceScatter()])
    check_configuration(AutoEncoder(channels=(4,), latent_dim=2, reconstruction_loss="mse"), standardised, [])


# -- the recipes of docs/design.md, as written -------------------------------------------------------------


def recipe_blocks(title: str) -> dict[str, str]:
    """The code blocks of one recipe of docs/design.md, by the file their first line names
    (`# networks/my_net.py`); an unnamed yaml block as `snippet.yaml`."""
    text = (ROOT / "docs" / "design.md").read_text()
    recipe = text.split(f"### {title}", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = {}
    for _indent, body in re.findall(r"^( *)```(?:python|yaml)\n(.*?)^\1```", recipe, flags=re.M | re.S):
        body = textwrap.dedent(body)
        first = body.splitlines()[0]
        name = first[2:].strip() if first.startswith("# ") and first.endswith((".py", ".yaml")) else "snippet.yaml"
        blocks[name] = body
    return blocks


def install(blocks: dict[str, str], monkeypatch) -> None:
    """Make each Python block importable under the module its file would be (networks/my_net.py ->
    networks.my_net), for the CLI's class paths and for loading checkpoints, without writing into
    the repository."""
    for name, code in blocks.items():
        if not name.endswith(".py"):
            continue
        dotted = name.removesuffix(".py").replace("/", ".")
        module = types.ModuleType(dotted)
        module.__file__ = str(ROOT / "docs" / "design.md")
        monkeypatch.setitem(sys.modules, dotted, module)
        exec(compile(code, f"docs/design.md ({name})", "exec"), module.__dict__)
        parent, _, child = dotted.rpartition(".")
        monkeypatch.setattr(importlib.import_module(parent), child, module, raising=False)


def config_of(blocks: dict[str, str], name: str, tmp_path: Path) -> str:
    path = tmp_path / Path(name).name
    path.write_text(blocks[name])
    return str(path)


def tiny_args_with(config: str, data_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    """tiny_cli_args with the docs' config in place of mnist_classifier.yaml."""
    return ["--config", config, *tiny_cli_args("mnist_classifier", data_root, tmp_path / "runs", *extra)[2:]]


def summary_of(directory: Path) -> dict:
    return json.loads((directory / "summary.json").read_text())


def test_recipe_add_a_model_fits_tests_and_predicts_as_written(run_cli, mnist_root, tmp_path, monkeypatch):
    blocks = recipe_blocks("Add a model")
    assert set(blocks) == {"networks/my_net.py", "lightning_modules/my_model.py", "configs/mnist_my_model.yaml"}
    install(blocks, monkeypatch)
    args = tiny_args_with(config_of(blocks, "configs/mnist_my_model.yaml", tmp_path), mnist_root, tmp_path)
    run_cli("fit", args)
    run = only_run(tmp_path, "mnist_my_model")
    # the config's figures: FeatureMaps (feature_layer) and the per-sample losses of validation (EvalOutput)
    assert (run / "figures" / "filters_first_conv").is_dir() and (run / "figures" / "val_loss_histogram").is_dir()
    run_cli("test", [*args, "--ckpt_path=best"])
    run_cli("predict", [*args, "--ckpt_path=best"])
    predicted = torch.load(last_evaluation(run, "predict") / "predictions.pt")
    assert set(predicted) == {"index", "label", "score_loss"}  # CnnlabModule's predict_step
    # the per-sample losses written by predict are the test's (the model is deterministic)
    test_loss = summary_of(last_evaluation(run, "test"))["metrics"]["test/loss"]
    assert predicted["score_loss"].mean().item() == pytest.approx(test_loss, rel=1e-4)
    model_class = sys.modules["lightning_modules.my_model"].MyModel
    assert model_class.load_from_checkpoint(run / "checkpoints" / "best.ckpt").hparams["image_shape"] == (1, 28, 28)


def test_recipe_add_a_dataset_fits_tests_and_predicts_as_written(run_cli, tmp_path, monkeypatch):
    blocks = recipe_blocks("Add a dataset")
    assert set(blocks) == {"datamodules/fashion_mnist.py", "configs/fashion_mnist_classifier.yaml"}
    install(blocks, monkeypatch)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", 300, 0), ("t10k", 100, 1)):
        images, labels = synthetic_images(n, 28, 1, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[..., 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    config = config_of(blocks, "configs/fashion_mnist_classifier.yaml", tmp_path)
    args = tiny_args_with(config, tmp_path / "data", tmp_path, "--data.download=false")
    run_cli("fit", args)
    run = only_run(tmp_path, "fashion_mnist_classifier")
    data_class = summary_of(run)["config"]["data"]["class_path"]
    assert data_class == "datamodules.fashion_mnist.FashionMNISTDataModule"
    assert (run / "figures" / "val_loss_histogram").is_dir()  # LossHistogram, with the dataset's class names
    run_cli("test", [*args, "--ckpt_path=best"])
    run_cli("predict", [*args, "--ckpt_path=best"])
    predicted = torch.load(last_evaluation(run, "predict") / "predictions.pt")
    assert predicted["probs"].shape == (100, 10) and len(predicted["label"]) == 100
    datamodule = sys.modules["datamodules.fashion_mnist"].FashionMNISTDataModule
    with pytest.raises(CnnlabError, match=r"Fashion-MNIST is not in .* could not be downloaded: data.download"):
        datamodule(data_dir=str(tmp_path / "elsewhere"), download=False).prepare_data()
    # training batches are flipped left-right, some of them: clothes are mirror-symmetric, digits are not
    images = torch.rand(64, 1, 28, 28)
    flipped = datamodule(data_dir=str(tmp_path / "data")).augment_batch(images)
    same, mirrored = (flipped == images).flatten(1).all(1), (flipped == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 64


def test_recipe_add_a_figure_callback_draws_as_written(run_cli, mnist_root, tmp_path, monkeypatch):
    blocks = recipe_blocks("Add a figure callback")
    assert set(blocks) == {"callbacks/hardest_images.py", "snippet.yaml"}
    install(blocks, monkeypatch)
    args = tiny_cli_args("mnist_classifier", mnist_root, tmp_path / "runs")
    run_cli("fit", [*args, "--config", config_of(blocks, "snippet.yaml", tmp_path)])
    run = only_run(tmp_path)
    grids = sorted((run / "figures" / "hardest_images").glob("*.png"))
    assert [p.name for p in grids] == ["epoch000.png"]
    assert iio.imread(grids[0]).shape[:2] == (2 * 30 + 2, 8 * 30 + 2)  # 16 images, 8 a row, 2 px padding
