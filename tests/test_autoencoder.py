"""AutoEncoder and VAE: shapes, losses and their numerics, the VAE's maths, save/load, anomaly scores."""

import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from cnnlab.errors import CnnlabError
from cnnlab.protocol import check_pairing
from datamodules import MNISTDataModule
from lightning_modules import VAE, AutoEncoder
from lightning_modules.gaussian_fit import GaussianFit
from lightning_modules.latent_scores import LatentScores
from lightning_modules.vae import kl_divergence, reparameterize
from networks.autoencoder import ConvDecoder, ConvEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"channels": (8, 16), "latent_dim": 4}


def batch_of(n: int = 6, shape=(1, 28, 28), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=generator), torch.arange(n) % 10


@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("upsample", ["nearest", "bilinear", "transposed"])
def test_decode_of_encode_has_the_input_shape(cls, shape, upsample):
    model = cls(image_shape=shape, latent_dim=5, channels=(8, 16, 32), upsample=upsample).eval()
    x, _ = batch_of(3, shape)
    z = model.encode(x)
    assert z.shape == (3, 5) and model.latent_dim == 5
    out = model.decode(z)
    assert out.shape == (3, *shape)
    assert out.min() >= 0 and out.max() <= 1  # bce: probabilities, the data range of [0, 1] inputs


def test_encoder_and_decoder_mirror_odd_sizes():
    # 28 -> 14 -> 7 -> 3 on the way down; the decoder must land on 7, 14, 28 exactly on the way up
    encoder, decoder = ConvEncoder((1, 28, 28), (4, 4, 4), 2), ConvDecoder((1, 28, 28), (4, 4, 4), 2, "transposed")
    assert encoder(torch.zeros(1, 1, 28, 28)).shape == (1, 2)
    assert decoder(torch.zeros(1, 2)).shape == (1, 1, 28, 28)


def test_too_many_encoder_layers_for_the_image_is_explained():
    with pytest.raises(CnnlabError, match="encoder layers halve a 28x28 image 5 times"):
        AutoEncoder(channels=(4, 4, 4, 4, 4))


@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
def test_per_sample_loss_is_unreduced_float32_under_autocast(cls):
    model = cls(**SMALL).eval()
    batch = batch_of(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.per_sample_loss(batch)
        scores = model.anomaly_scores(batch)
    assert losses.shape == (5,) and losses.dtype == torch.float32
    assert all(s.shape == (5,) and s.dtype == torch.float32 for s in scores.values())
    assert torch.isfinite(losses).all()


def test_autoencoder_loss_is_bce_summed_over_pixels():
    model = AutoEncoder(**SMALL).eval()
    x, labels = batch_of(4)
    with torch.no_grad():
        p = model(x)
        expected = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
        assert torch.allclose(model.per_sample_loss((x, labels)), expected, rtol=1e-4)
        mse = AutoEncoder(**SMALL, reconstruction_loss="mse").eval()
        assert torch.allclose(mse.per_sample_loss((x, labels)), (mse(x) - x).square().flatten(1).sum(1), rtol=1e-5)


def test_autoencoder_anomaly_loss_score_is_the_per_sample_loss():
    model = AutoEncoder(**SMALL).eval()
    batch = batch_of(4)
    with torch.no_grad():
        assert torch.equal(model.anomaly_scores(batch)["loss"], model.per_sample_loss(batch))


def test_vae_anomaly_scores_are_the_elbo_terms():
    model = VAE(**SMALL).eval()
    batch = batch_of(4)
    with torch.no_grad():
        torch.manual_seed(3)
        scores = model.anomaly_scores(batch)
        torch.manual_seed(3)
        assert torch.equal(scores["loss"], model.per_sample_loss(batch))
        mu, logvar = model.posterior(batch[0])
        assert torch.allclose(scores["latent_kl"], kl_divergence(mu, logvar))
        assert set(scores) == {"loss", "latent_kl", "latent_distance", "combined"}


def test_closed_form_kl_matches_a_monte_carlo_estimate():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 4), torch.randn(3, 4) * 0.5
    z = reparameterize(mu.expand(200_000, 3, 4), logvar.expand(200_000, 3, 4))
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    monte_carlo = (log_q - log_p).mean(0)
    assert torch.allclose(kl_divergence(mu, logvar), monte_carlo, atol=0.02)


def test_gradients_flow_through_the_reparameterisation():
    mu = torch.zeros(2, 3, requires_grad=True)
    logvar = torch.zeros(2, 3, requires_grad=True)
    reparameterize(mu, logvar).square().sum().backward()
    assert mu.grad is not None and logvar.grad is not None
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


def test_log_variance_is_clamped_to_a_finite_range():
    model = VAE(**SMALL).eval()
    with torch.no_grad():
        model.encoder.body.head.bias[model.latent_dim :] = 1e4  # an encoder gone wild
        mu, logvar = model.posterior(batch_of(2)[0])
    assert logvar.max() == 20.0 and torch.isfinite(kl_divergence(mu, logvar)).all()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_beta_scales_the_kl_term_of_the_training_loss():
    batch = batch_of(8)
    losses = {}
    for beta in (1.0, 3.0):
        torch.manual_seed(0)
        model = VAE(**SMALL, beta=beta)
        torch.manual_seed(1)
        losses[beta] = model.training_step(batch, 0).item()
    torch.manual_seed(0)
    model = VAE(**SMALL)
    torch.manual_seed(1)
    recon, kl, _ = model._terms(batch[0])
    assert losses[1.0] == pytest.approx((recon + kl).mean().item(), rel=1e-5)
    assert losses[3.0] - losses[1.0] == pytest.approx(2 * kl.mean().item(), rel=1e-4)


def test_kl_warm_up_ramps_the_weight_linearly_to_beta_in_training_only():
    model = VAE(**SMALL, beta=2.0, kl_warmup_steps=100).train()
    assert [model.kl_weight(step) for step in (0, 25, 100, 400)] == [0.0, 0.5, 2.0, 2.0]
    assert model.eval().kl_weight(0) == 2.0  # validation and test always use beta


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_kl_warm_up_weights_the_training_loss():
    batch = batch_of(8)
    model = VAE(**SMALL, beta=2.0, kl_warmup_steps=4).train()
    torch.manual_seed(1)
    recon, kl, _ = model._terms(batch[0])
    torch.manual_seed(1)
    loss = model.training_step(batch, 0)  # no trainer: step 0, KL weight 0
    assert loss.item() == pytest.approx(recon.mean().item(), rel=1e-5)
    assert kl.mean() > 0


def test_iwae_bound_is_tighter_than_the_elbo_and_k1_is_the_elbo():
    torch.manual_seed(0)
    model = VAE(**SMALL).eval()
    x, labels = batch_of(16)
    with torch.no_grad():
        neg_elbo = torch.stack([model.per_sample_loss((x, labels)) for _ in range(50)]).mean()
        k1 = torch.stack([model.iwae_nll(x, 1) for _ in range(50)]).mean()
        k64 = model.iwae_nll(x, 64, max_decodes=100).mean()  # 64 samples decoded in chunks of 6
    assert k1 == pytest.approx(neg_elbo.item(), rel=0.01)
    assert k64 < neg_elbo - 1.0


def test_sample_draws_images_from_the_prior():
    model = VAE(**SMALL).eval()
    torch.manual_seed(0)
    first = model.sample(5)
    torch.manual_seed(0)
    assert first.shape == (5, 1, 28, 28) and torch.equal(first, model.sample(5))
    assert not torch.equal(first, model.sample(5))


def test_latent_gaussian_recovers_the_mean_and_covariance():
    torch.manual_seed(0)
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]])
    z = torch.distributions.MultivariateNormal(torch.tensor([3.0, -1.0]), cov).sample((20_000,))
    gaussian = GaussianFit(2, shrinkage=0.0)
    for part in z.split(1000):
        gaussian.update(part)
    gaussian.fit()
    assert torch.allclose(gaussian.mean, torch.tensor([3.0, -1.0]), atol=0.03)
    assert torch.allclose(torch.linalg.inv(gaussian.precision), cov, atol=0.05)
    point = torch.tensor([[3.0, 0.0]])  # one unit along the second axis: (0, 1) cov^-1 (0, 1)^T
    assert gaussian.distance(point).item() == pytest.approx(torch.linalg.inv(cov)[1, 1].item(), rel=0.05)


def test_bce_on_standardised_data_is_refused_but_mse_is_not(mnist_root):
    datamodule = MNISTDataModule(data_dir=str(mnist_root), val_size=100, normalize=True)
    with pytest.raises(CnnlabError, match=r"data\.normalize false"):
        check_pairing(AutoEncoder(**SMALL), datamodule)
    check_pairing(AutoEncoder(**SMALL, reconstruction_loss="mse"), datamodule)
    check_pairing(AutoEncoder(**SMALL), MNISTDataModule(data_dir=str(mnist_root), normalize=False))


def test_combined_score_is_the_standardised_loss_plus_the_standardised_latent_distance():
    scores = LatentScores(latent_dim=2)
    scores.latent_gaussian.mean.copy_(torch.tensor([1.0, -1.0]))
    scores.latent_gaussian.precision.copy_(torch.tensor([[4.0, 0.0], [0.0, 0.25]]))  # std 0.5 and 2
    scores.loss_gaussian.mean.fill_(100.0)
    scores.loss_gaussian.precision.fill_(1 / 25)  # loss std 5
    z = torch.tensor([[1.0, -1.0], [1.5, 1.0], [0.0, 3.0]])
    loss = torch.tensor([100.0, 110.0, 90.0])
    out = scores.scores(z, loss)
    # by hand: squared Mahalanobis distances 0, (0.5/0.5)^2 + (2/2)^2 = 2, (1/0.5)^2 + (4/2)^2 = 8
    assert torch.allclose(out["latent_distance"], torch.tensor([0.0, 2.0, 8.0]))
    # (loss - 100) / 5 + (distance - D) / sqrt(2 D) with D = 2
    assert torch.allclose(out["combined"], torch.tensor([0.0 - 1.0, 2.0 + 0.0, -2.0 + 3.0]))
    assert torch.equal(out["loss"], loss)


def fit_tiny(model, steps: int, tmp_path, data: MNISTDataModule | None = None) -> Trainer:
    """A few training steps, on `data` or (None) on bare DataLoaders of structured random images."""
    trainer = Trainer(
        max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, accelerator="cpu", limit_val_batches=2,
    )  # fmt: skip
    if data is not None:
        trainer.fit(model, data)
        return trainer
    x, labels = batch_of(64, seed=1)
    x = (x > 0.7).float()  # something with structure to learn
    loader = DataLoader(TensorDataset(x, labels), batch_size=16)
    trainer.fit(model, loader, loader)
    return trainer


def tiny_mnist(mnist_root, **kwargs) -> MNISTDataModule:
    """The synthetic MNIST as the AE configs read it: pixels in [0, 1], no augmentation, batches of 16."""
    options = {"val_size": 100, "batch_size": 16, "eval_batch_size": 16, "normalize": False, "augment": False}
    return MNISTDataModule(data_dir=str(mnist_root), download=False, **(options | kwargs))


@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
def test_the_loss_goes_down_on_tiny_data(cls, tmp_path):
    torch.manual_seed(0)
    model = cls(**SMALL, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    batch = (lambda x, y: ((x > 0.7).float(), y))(*batch_of(64, seed=1))
    model.eval()
    with torch.no_grad():
        before = model.per_sample_loss(batch).mean()
    fit_tiny(model, 40, tmp_path)
    model.eval()
    with torch.no_grad():
        after = model.per_sample_loss(batch).mean()
    # measured (40 steps, seeds 0-4, 1 and 2 threads): after / before 0.65-0.79 (AE), 0.37-0.67 (VAE)
    assert after < 0.9 * before


@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
def test_checkpoint_round_trip_gives_identical_outputs(cls, mnist_root, tmp_path):
    torch.manual_seed(0)
    model = cls(**SMALL, upsample="transposed")
    trainer = fit_tiny(model, 4, tmp_path, tiny_mnist(mnist_root, max_eval_samples=32))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path).eval()
    model.eval()
    assert loaded.hparams.upsample == "transposed" and loaded.latent_dim == SMALL["latent_dim"]
    # the latent Gaussian fitted at validation travels with the weights
    fitted = loaded.latent_scores.latent_gaussian
    assert not torch.equal(fitted.mean, torch.zeros(SMALL["latent_dim"]))
    assert torch.equal(fitted.precision, model.latent_scores.latent_gaussian.precision)
    # so do the validation scores that thresholds are drawn from
    reference = loaded.reference_scores()
    assert set(reference) >= {"loss", "latent_distance", "combined"} and len(reference["loss"]) == 32
    assert all(torch.equal(reference[k], model.reference_scores()[k]) for k in reference)
    x, labels = batch_of(4)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))
        assert torch.equal(loaded(x), model(x))
        torch.manual_seed(5)
        expected = model.anomaly_scores((x, labels))
        torch.manual_seed(5)
        got = loaded.anomaly_scores((x, labels))
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_latent_gaussians_are_fitted_on_the_normal_training_images(mnist_root, tmp_path):
    """Not on the validation images, which hold anomalies in an anomaly run (90% of them here)."""
    torch.manual_seed(0)
    model = AutoEncoder(**SMALL)
    data = tiny_mnist(mnist_root, normal_classes=[3])
    data.setup("fit")
    images, labels = data.samples("train")
    trainer = fit_tiny(model, 2 * (len(images) // 16), tmp_path, data)  # two whole epochs: ends on a validation
    assert set(labels.tolist()) == {3} and len(images) <= 2000  # every normal training image is fitted
    model.eval()
    with torch.no_grad():
        x = data.model_input(images)
        z = model.encode(x).double()
        losses = model.per_sample_loss((x, labels)).double()
        val_codes = model.encode(data.model_input(data.samples("val")[0][:32]))  # the two validation batches
    gaussian, loss_gaussian = model.latent_scores.latent_gaussian, model.latent_scores.loss_gaussian
    assert torch.allclose(gaussian.mean.double(), z.mean(0), atol=1e-5)
    n = len(z)
    assert math.isclose(gaussian.distance(z.float()).mean().item(), 4 * (n - 1) / n, rel_tol=0.02)
    assert loss_gaussian.mean.item() == pytest.approx(losses.mean().item(), rel=1e-5)
    assert loss_gaussian.precision.item() == pytest.approx(1 / losses.var().item(), rel=1e-3)
    # the validation steps' scores are final: measured against this very fit
    assert torch.allclose(model.reference_scores()["latent_distance"], gaussian.distance(val_codes), atol=1e-4)
    # `validate` of the checkpoint keeps the fit it carries
    before = {name: value.clone() for name, value in model.latent_scores.state_dict().items()}
    trainer.validate(model, data, verbose=False)
    assert all(torch.equal(value, before[name]) for name, value in model.latent_scores.state_dict().items())


def test_latent_gaussians_fit_a_fixed_subset_of_a_large_training_set():
    chosen = LatentScores.fit_indices(5000)
    assert len(chosen) == 2000 and torch.equal(chosen, LatentScores.fit_indices(5000))  # the same every epoch
    assert len(chosen.unique()) == 2000 and chosen.max() < 5000
    assert torch.equal(LatentScores.fit_indices(300), torch.arange(300))


def test_without_a_cnnlab_datamodule_the_knn_score_is_left_out_with_one_warning(tmp_path):
    # A plain Trainer on bare DataLoaders: no training images to fit the k-NN bank or the Gaussians to;
    # the model trains, warns once, scores with everything else, and its Gaussians stay unfitted.
    torch.manual_seed(0)
    model = AutoEncoder(**SMALL, knn_k=5)
    with pytest.warns(UserWarning, match="knn anomaly score") as caught:
        fit_tiny(model, 6, tmp_path)
    assert sum("training images" in str(w.message) for w in caught) == 1
    with torch.no_grad():
        scores = model.eval().anomaly_scores(batch_of(4))
    assert "knn" not in scores and {"loss", "latent_distance", "combined"} <= set(scores)
    gaussian = model.latent_scores.latent_gaussian
    assert torch.equal(gaussian.mean, torch.zeros(4)) and torch.equal(gaussian.precision, torch.eye(4))


def test_knn_is_off_unless_asked_for():
    assert AutoEncoder(**SMALL).latent_scores.neighbours is None
    assert "knn" not in VAE(**SMALL).score_names()
    assert AutoEncoder(**SMALL, knn_k=3).latent_scores.neighbours.k == 3
