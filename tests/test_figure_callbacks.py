"""LatentSpaceScatter, LatentInterpolationGIF and FilterAndFeatureMaps on a tiny trained conv
autoencoder: the files they write, what the pictures are made of, and the loggers they reach."""

import csv
import types
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tiny_autoencoder import TinyAutoEncoder

from callbacks import FilterAndFeatureMaps, LatentInterpolationGIF, LatentSpaceScatter, LossHistogram
from callbacks.figure import first_of_class, fixed_subset
from callbacks.filters_and_feature_maps import layer_name
from callbacks.latent_interpolation import lerp, slerp
from callbacks.projection import pca_2d, tsne_2d
from cnnlab.errors import CnnlabError
from cnnlab.wandb_logger import WandbLogger
from datamodules import MNISTDataModule
from lightning_modules import ImageClassifier

STEPS, SCALE = 4, 2


def all_callbacks() -> list:
    return [
        LatentSpaceScatter(num_samples=60),
        LatentInterpolationGIF(steps=STEPS, scale=SCALE),
        FilterAndFeatureMaps(num_images=2, num_random_kernels=2, max_filters=3),
        LossHistogram(num_extremes=3),
    ]


def fit_and_test(root: Path, out: Path, logger, epochs: int = 2, **data) -> tuple[Trainer, TinyAutoEncoder]:
    torch.manual_seed(0)
    dm = MNISTDataModule(data_dir=str(root), val_size=100, batch_size=50, max_train_samples=300, **data)
    model = TinyAutoEncoder()
    trainer = Trainer(
        max_epochs=epochs,
        logger=logger,
        default_root_dir=out,
        callbacks=all_callbacks(),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    return trainer, model


@pytest.fixture(scope="module")
def run(mnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent_run")
    trainer, model = fit_and_test(mnist_root, out, CSVLogger(out, name="", version=""))
    return types.SimpleNamespace(trainer=trainer, model=model, figures=out / "figures")


def callback(trainer: Trainer, kind: type):
    return next(c for c in trainer.callbacks if isinstance(c, kind))


def test_scatter_is_drawn_before_training_after_each_epoch_and_at_test(run):
    files = sorted(p.name for p in (run.figures / "latent_scatter").iterdir())
    assert files == ["before-training.png", "epoch000.png", "epoch001.png", "test.png"]
    for name in files:
        assert iio.imread(run.figures / "latent_scatter" / name).ndim == 3


def test_scatter_encodes_the_same_subset_with_every_class(run):
    scatter = callback(run.trainer, LatentSpaceScatter)
    codes, labels = scatter.codes(run.trainer, run.model, "val")
    again, labels_again = scatter.codes(run.trainer, run.model, "val")
    assert codes.shape == (60, run.model.latent_dim)
    assert torch.equal(labels, labels_again) and torch.allclose(codes, again)
    assert torch.bincount(labels, minlength=10).min() >= 5  # classes taken in turn, not at random


def test_fixed_subset_takes_classes_in_turn_and_is_reproducible():
    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 45)
    pick = fixed_subset(labels, 9, seed=3)
    assert torch.equal(pick, fixed_subset(labels, 9, seed=3))
    assert torch.bincount(labels[pick], minlength=3).tolist() == [3, 3, 3]
    assert len(set(pick.tolist())) == 9


def test_interpolation_gif_has_every_step_forwards_and_back(run):
    gif = run.figures / "latent_interpolation" / "epoch001.gif"
    frames = iio.imread(gif, index=None)
    # bounce: steps forwards, then back without repeating the ends
    assert frames.shape[0] == 2 * STEPS - 2
    # 2 pairs (rows) x 2 methods (columns) of 28 px tiles with 2 px borders, upscaled
    side = (2 * (28 + 2) + 2) * SCALE
    assert frames.shape[1:3] == (side, side)
    assert (run.figures / "latent_interpolation_strip" / "epoch001.png").is_file()
    assert (run.figures / "latent_interpolation" / "test.gif").is_file()


def test_interpolation_frames_decode_the_walk_between_the_two_codes(run):
    gif = callback(run.trainer, LatentInterpolationGIF)
    frames, inputs, pairs = gif.frames(run.trainer, run.model, "val")
    assert pairs == [(9, 4), (1, 7)] and frames.shape == (2, 2, STEPS, 1, 28, 28)
    dm = run.trainer.datamodule
    images, labels = dm.samples("val")
    chosen = [first_of_class(labels, 9, gif.seed), first_of_class(labels, 4, gif.seed)]
    x = dm.model_input(images[torch.tensor(chosen)])
    with torch.inference_mode():
        z = run.model.eval().encode(x)
        ends = dm.denormalize(run.model.decode(z))
        middle = dm.denormalize(run.model.decode((z[:1] + z[1:]) / 2))
    # both methods start and end at the reconstructions of the two chosen images
    for method in range(2):
        assert torch.allclose(frames[0, method, 0], ends[0], atol=1e-5)
        assert torch.allclose(frames[0, method, -1], ends[1], atol=1e-5)
    assert torch.allclose(inputs[0, 0], dm.denormalize(x[0]), atol=1e-6)
    # lerp with 4 steps has no exact midpoint; check t = 1/3 instead
    third = dm.denormalize(run.model.decode(z[:1] * 2 / 3 + z[1:] / 3).detach())
    assert torch.allclose(frames[0, 0, 1], third[0], atol=1e-5)
    assert not torch.allclose(middle, ends[:1], atol=1e-3)  # the walk really moves


def test_slerp_stays_on_the_sphere_and_lerp_cuts_through_it():
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    t = torch.linspace(0, 1, 5)
    arc, line = slerp(a, b, t), lerp(a, b, t)
    assert torch.allclose(arc[0], a) and torch.allclose(arc[-1], b)
    assert torch.allclose(arc.norm(dim=1), torch.full((5,), 3.0), atol=1e-5)
    assert line[2].norm() == pytest.approx(3 / 2**0.5, rel=1e-5)
    assert torch.allclose(slerp(a, 2 * a, t), lerp(a, 2 * a, t))  # parallel codes: a straight line


def test_pca_finds_the_direction_of_largest_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 5, generator=g) * torch.tensor([0.1, 5.0, 0.1, 1.0, 0.1])
    points, share = pca_2d(x)
    assert share[0] > 0.9 and share[0] > share[1] > 0
    assert torch.corrcoef(torch.stack([points[:, 0], x[:, 1]]))[0, 1].abs() > 0.99
    assert torch.equal(points, pca_2d(x)[0])  # deterministic signs


def test_tsne_keeps_clusters_apart():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g) * 4
    labels = torch.arange(150) % 3
    x = centres[labels] + torch.randn(150, 20, generator=g)
    y = tsne_2d(x, perplexity=15, iterations=400)
    d = torch.cdist(y, y)
    d.fill_diagonal_(float("inf"))
    neighbours = d.topk(5, largest=False).indices
    assert (labels[neighbours] == labels[:, None]).float().mean() > 0.95


def test_filter_figures_are_written_once_and_every_epoch(run):
    assert iio.imread(run.figures / "filters_sobel" / "sobel.png").ndim == 3
    assert iio.imread(run.figures / "filters_random_kernels" / "random-kernels.png").ndim == 3
    first = sorted(p.name for p in (run.figures / "filters_first_conv").iterdir())
    assert first == ["before-training.png", "epoch000.png", "epoch001.png", "test.png"]


def test_feature_maps_are_what_the_layer_the_model_names_computes(run):
    conv = run.model.feature_layer()  # the protocol names the layer; nothing walks the model to find one
    name = layer_name(run.model, conv)
    assert name == "encoder.0" and conv is run.model.encoder[0]
    filters = callback(run.trainer, FilterAndFeatureMaps)
    found_name, _, conv_input, conv_output, shown = filters.feature_maps(run.trainer, run.model, "val")
    assert found_name == name and conv_output.shape == (2, 8, 14, 14)  # stride 2: 28 -> 14
    with torch.inference_mode():
        assert torch.allclose(conv_output, conv(conv_input), atol=1e-5)
    assert shown.shape == (2, 1, 28, 28) and shown.min() >= 0 and shown.max() <= 1


def test_callbacks_restore_the_module_training_flags(run):
    filters = callback(run.trainer, FilterAndFeatureMaps)
    run.model.train()
    run.model.encoder[0].eval()  # a deliberately frozen layer stays frozen
    filters.feature_maps(run.trainer, run.model, "val")
    assert run.model.training and run.model.decoder.training and not run.model.encoder[0].training


def test_latent_callbacks_refuse_a_model_without_a_latent_space():
    classifier = ImageClassifier()
    trainer = types.SimpleNamespace(datamodule=MNISTDataModule())
    with pytest.raises(
        CnnlabError, match=r"LatentSpaceScatter needs a model with a latent space.*encode \(LatentModel\)"
    ):
        LatentSpaceScatter().setup(trainer, classifier, "fit")
    with pytest.raises(CnnlabError, match=r"decode \(LatentModel\)"):
        LatentInterpolationGIF().setup(trainer, classifier, "fit")


def test_bad_settings_are_explained():
    with pytest.raises(CnnlabError, match="pairs"):
        LatentInterpolationGIF(pairs=[[1, 2, 3]])
    with pytest.raises(CnnlabError, match="conv_settings"):
        FilterAndFeatureMaps(conv_settings=[[0, 1]])
    with pytest.raises(CnnlabError, match="bins"):
        LossHistogram(bins=0)


def test_tensorboard_and_wandb_offline_receive_every_figure(mnist_root, tmp_path, fresh_wandb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard = TensorBoardLogger(tmp_path / "tb", name="", version="")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    fit_and_test(mnist_root, tmp_path, [tensorboard, wandb_logger], epochs=1)
    tensorboard.experiment.flush()
    wandb_logger.experiment.finish()

    keys = {"latent/scatter", "latent/interpolation", "latent/interpolation_strip", "filters/sobel"}
    keys |= {"filters/random_kernels", "filters/first_conv", "val/loss_histogram", "test/extremes"}
    tags = set(EventAccumulator(str(tmp_path / "tb")).Reload().Tags()["images"])
    assert keys <= tags, keys - tags

    media = [p for p in (tmp_path / "wandb").glob("offline-run-*/files/media/**/*") if p.is_file()]
    names = " ".join(str(p.relative_to(tmp_path)) for p in media)
    for key in ("scatter", "interpolation_strip", "sobel", "random_kernels", "first_conv", "loss_histogram"):
        assert key in names, key
    assert any(p.suffix == ".gif" for p in media)
    assert any("per_sample_scores" in str(p) and p.name.endswith("table.json") for p in media)
    # and every figure is a file under the run directory too
    assert (tmp_path / "tb" / "figures" / "latent_interpolation" / "epoch000.gif").is_file()


def test_figures_are_written_without_a_collective_call(tmp_path, monkeypatch):
    # rank zero writes alone: anything collective (Trainer.log_dir broadcasts) would hang DDP
    from callbacks import media

    trainer = Trainer(logger=CSVLogger(tmp_path, name="", version=""), default_root_dir=tmp_path, accelerator="cpu")

    def collective(*args, **kwargs):
        raise AssertionError("a collective call from rank zero alone")

    monkeypatch.setattr(trainer.strategy, "broadcast", collective)
    monkeypatch.setattr(trainer.strategy, "barrier", collective)
    path = media.log_image(trainer, "grid", torch.rand(1, 4, 4))
    assert path == tmp_path / "figures" / "grid" / "epoch000.png"


def test_callback_settings_in_yaml_decide_what_the_callbacks_draw(run_cli, mnist_root, tmp_path, monkeypatch):
    """Each callback configured in a YAML file (over the config's own list) through train.py: the
    figures of a fit and a test follow the settings given there, not the defaults."""
    from conftest import last_evaluation, only_run, tiny_cli_args

    from callbacks import filters_and_feature_maps, latent_scatter

    (tmp_path / "figures.yaml").write_text(
        """
trainer:
  callbacks:
    - class_path: callbacks.LatentSpaceScatter
      init_args: {num_samples: 12, projection: pca, every_n_epochs: 5}
    - class_path: callbacks.LatentInterpolationGIF
      init_args: {pairs: [[3, 8]], methods: [slerp], steps: 5, scale: 1}
    - class_path: callbacks.LossHistogram
      init_args: {score: loss, stages: [test]}
    - class_path: callbacks.FilterAndFeatureMaps
      init_args: {kernel_size: 3, num_random_kernels: 2, conv_settings: [[1, 1], [2, 0]]}
"""
    )
    drawn = {"scatter": [], "kernels": []}
    scatter, kernels = latent_scatter.scatter_figure, filters_and_feature_maps.random_kernels_figure
    monkeypatch.setattr(
        latent_scatter, "scatter_figure", lambda points, *a: drawn["scatter"].append(len(points)) or scatter(points, *a)
    )
    monkeypatch.setattr(
        filters_and_feature_maps,
        "random_kernels_figure",
        lambda image, k, settings: drawn["kernels"].append((tuple(k.shape), settings)) or kernels(image, k, settings),
    )
    extra = ["--model.channels=[8, 16]", "--model.latent_dim=4", "--trainer.max_epochs=2"]
    extra += ["--data.normal_classes=[3, 8]", "--config", str(tmp_path / "figures.yaml")]
    args = tiny_cli_args("mnist_ae", mnist_root, tmp_path / "runs", *extra)
    run_cli("fit", args)
    run = only_run(tmp_path, "mnist_ae")
    run_cli("test", [*args, "--ckpt_path=best"])
    tested = last_evaluation(run, "test")

    # scatter: 12 codes each time; every 5th epoch means of 2 epochs only the last (and before training)
    assert sorted(p.name for p in (run / "figures" / "latent_scatter").iterdir()) == [
        "before-training.png",
        "epoch001.png",
    ]
    assert drawn["scatter"] == [12, 12, 12]  # before training, after epoch 2, at test
    # the GIF: one pair, one method, 5 steps there and back (8 frames), one 28 px tile at scale 1 (a
    # grid of one tile has no border)
    frames = iio.imread(run / "figures" / "latent_interpolation" / "epoch001.gif", index=None)
    assert frames.shape[:3] == (2 * 5 - 2, 28, 28)
    # the random kernels: two 3x3 kernels under exactly the two (stride, padding) settings
    assert drawn["kernels"] == [((2, 3, 3), [(1, 1), (2, 0)])] * 2  # once in fit, once at test
    # LossHistogram on the test stage only; its 'flagged' column is of the score the YAML names, at the
    # best-F1 threshold the checkpoint's last validation chose (the model's, kept in the checkpoint)
    assert not (run / "figures" / "val_loss_histogram").exists()
    assert list((tested / "figures" / "test_loss_histogram").glob("*.png"))
    threshold = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["anomaly_thresholds"]["loss"]
    with open(tested / "figures" / "test_per_sample_scores" / "test.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["flagged"] == "True" for r in rows] == [float(r["loss"]) >= threshold for r in rows]


def test_the_scatter_draws_the_points_it_is_given_in_class_colours():
    from callbacks.latent_scatter import scatter_figure

    points = torch.tensor([[0.0, 1.0], [2.0, -1.0], [3.5, 0.5], [-1.0, -2.0]])
    labels = torch.tensor([0, 1, 0, 2])
    figure = scatter_figure(points, labels, ["zero", "one", "two"], ("x", "y"), "title")
    drawn = figure.axes[0].collections[0]
    assert torch.allclose(torch.tensor(drawn.get_offsets(), dtype=torch.float32), points)
    colours = drawn.get_facecolors()[:, :3]
    assert (colours[0] == colours[2]).all() and not (colours[0] == colours[1]).all()  # one colour per class
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["zero", "one", "two"]


def test_the_extremes_figure_shows_the_lowest_and_highest_scores():
    from callbacks.loss_histogram import SplitScores, _extremes
    from callbacks.mosaic import Mosaic

    n, k = 6, 2
    images = torch.stack([torch.full((1, 4, 4), i / 10) for i in range(n)])  # image i is grey level i/10
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])
    split = SplitScores(torch.arange(n), torch.arange(n), {"loss": scores}, torch.zeros(n, dtype=torch.bool))
    picks = torch.cat([scores.argsort()[:k], scores.argsort(descending=True)[:k]])
    figure = _extremes(images[picks], split, picks, "loss", str, k)
    canvas = figure.axes[0].get_images()[0].get_array()
    layout = Mosaic(2, k, 4, 4, pad=6)
    shown = []
    for row in range(2):
        for col in range(k):
            top, left = layout._origin(row, col)
            shown.append(round(float(canvas[top + 1, left + 1, 0]) * 10))
    assert shown == [1, 5, 2, 4]  # lowest scores (images 1, 5), then highest (images 2, 4)
