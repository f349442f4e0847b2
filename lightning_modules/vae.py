"""VAE (Kingma & Welling 2014): the AutoEncoder with a Gaussian posterior over the code (a
GaussianEncoder in place of its encoder), trained on the negative ELBO (reconstruction + beta * KL, in
nats per image); samples from the prior, an importance-weighted bound on -log p(x) at test time (Burda
et al. 2015), and anomaly scores."""

import math

import torch
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from cnnlab.errors import CnnlabError
from cnnlab.protocol import Batch, EvalOutput
from lightning_modules.autoencoder import AutoEncoder
from networks.autoencoder import GaussianEncoder

# exp(LOGVAR_MAX) ~ 5e8 and exp(LOGVAR_MIN) ~ 1e-13 are finite in float32; an encoder that leaves
# this range early in training (or under a too-high learning rate) would give inf/NaN KL terms.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
STAGE_METRICS = ("loss", "recon", "kl", "neg_elbo")


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I): a sample of q(z|x) that gradients flow through."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) of each row in closed form, in nats: [B]."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)


class VAE(AutoEncoder):
    """A convolutional variational autoencoder with a standard normal prior. It takes the AutoEncoder's
    arguments too (image_shape, latent_dim, channels, upsample, reconstruction_loss, knn_k, knn_metric,
    optimizer, lr_scheduler); with mse the decoder is a Gaussian of fixed std `gaussian_std`.

    Args:
        beta: Weight of the KL term in the training loss (beta-VAE, Higgins et al. 2017); 1 is the ELBO.
        kl_warmup_steps: The KL weight rises linearly from 0 to beta over this many training steps
            (Bowman et al. 2016; 0: no warm-up). Validation and test always use beta.
        iwae_samples: Importance samples K of the test-time bound test/iwae_nll (0 turns it off).
        gaussian_std: Standard deviation of the Gaussian likelihood when reconstruction_loss is mse.
    """

    def __init__(
        self,
        *args,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        iwae_samples: int = 8,
        gaussian_std: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        if beta < 0 or kl_warmup_steps < 0 or iwae_samples < 0 or gaussian_std <= 0:
            raise CnnlabError(
                f"VAE settings out of range: beta {beta}, kl_warmup_steps {kl_warmup_steps}, iwae_samples "
                f"{iwae_samples}, gaussian_std {gaussian_std}. beta, kl_warmup_steps and iwae_samples must be "
                "0 or more (beta 1 is the plain VAE), gaussian_std above 0."
            )
        self.beta, self.kl_warmup_steps, self.iwae_samples = beta, kl_warmup_steps, iwae_samples
        self.gaussian_std = gaussian_std
        for stage in ("val", "test"):
            for name in STAGE_METRICS:
                setattr(self, f"{stage}_{name}", MeanMetric())
        self.test_iwae_nll = MeanMetric()

    @override
    def build_encoder(self, image_shape: tuple[int, int, int], channels: tuple[int, ...], latent_dim: int) -> nn.Module:
        return GaussianEncoder(image_shape, channels, latent_dim, LOGVAR_MIN, LOGVAR_MAX)

    # -- the protocol (cnnlab/protocol.py) -----------------------------------------------------

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), float32, the log-variance clamped to a finite range."""
        return self.encoder(images.contiguous(memory_format=torch.channels_last))

    @override
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean of each image's code: [B, latent_dim]."""
        return self.posterior(images)[0]

    def sample(self, n: int) -> torch.Tensor:
        """n images decoded from codes drawn from the prior N(0, I): [n, C, H, W]."""
        return self.decode(torch.randn(n, self.latent_dim, device=self.device))

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        """Negative ELBO of each image (one posterior sample, beta 1), nats, float32: [B]."""
        recon, kl, _ = self._terms(batch[0])
        return recon + kl

    def anomaly_scores(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-image anomaly scores, float32 [B] each, larger = more anomalous.

        loss: the negative ELBO (= per_sample_loss). latent_kl: KL(q(z|x) || p(z)), how far the
        posterior lies from the prior. latent_distance: squared Mahalanobis distance of the posterior
        mean to a Gaussian fitted to the posterior means of the normal training images at the last
        validation during fit. combined: loss and latent_distance standardised and summed
        (LatentScores). knn (knn_k > 0): the mean distance to the k nearest normal training means.
        """
        recon, kl, mu = self._terms(batch[0])
        return {**self.latent_scores.scores(mu, recon + kl), "latent_kl": kl}

    @override
    def codes_and_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior mean [B, D] and the negative ELBO [B] of each image, as `anomaly_scores`."""
        recon, kl, mu = self._terms(images)
        return mu, recon + kl

    @override
    def score_names(self) -> tuple[str, ...]:
        return (*super().score_names(), "latent_kl")

    # -- the objective -------------------------------------------------------------------------

    def reconstruction_error(self, output: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) of each image in nats (float32, see AutoEncoder): Bernoulli for bce, Gaussian
        with std gaussian_std for mse."""
        if self.reconstruction_loss == "bce":
            return super().reconstruction_error(output, images)
        squared = super().reconstruction_error(output, images)
        log_norm = math.log(self.gaussian_std) + 0.5 * math.log(2 * math.pi)  # per pixel
        return 0.5 * squared / self.gaussian_std**2 + images[0].numel() * log_norm

    def _terms(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction term and KL of each image (one sample of z), and the posterior mean."""
        mu, logvar = self.posterior(images)
        z = reparameterize(mu, logvar)
        return self.reconstruction_error(self.decoder(z), images), kl_divergence(mu, logvar), mu

    @override
    def epoch_metrics(self, stage: str) -> dict:
        if stage == "train":
            return {}
        metrics = {name: getattr(self, f"{stage}_{name}") for name in STAGE_METRICS}
        return {**metrics, "iwae_nll": self.test_iwae_nll} if stage == "test" else metrics

    def kl_weight(self, step: int) -> float:
        """The KL weight at training step `step`: beta, ramped linearly from 0 over the first
        kl_warmup_steps steps; always beta outside training."""
        if self.kl_warmup_steps == 0 or not self.training:
            return self.beta
        return self.beta * min(1.0, step / self.kl_warmup_steps)

    @torch.no_grad()
    def iwae_nll(self, images: torch.Tensor, k: int, max_decodes: int = 2048) -> torch.Tensor:
        """The importance-weighted bound on -log p(x) with k samples (Burda et al. 2015), nats: [B].

        -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x); k = 1 is the one-sample negative
        ELBO and the bound tightens towards -log p(x) as k grows. Decodes at most `max_decodes`
        images at a time, so k = 5000 fits in memory.
        """
        mu, logvar = self.posterior(images)
        std = torch.exp(0.5 * logvar)
        chunk = max(1, max_decodes // len(images))
        log_weights = []
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            eps = torch.randn(n, *mu.shape, device=mu.device)
            z = mu + std * eps  # [n, B, D]
            output = self.decoder(z.flatten(0, 1))
            targets = images.unsqueeze(0).expand(n, *images.shape).flatten(0, 1)
            log_px_z = -self.reconstruction_error(output, targets).view(n, len(images))
            # log p(z) - log q(z|x); the 2*pi terms of the two Gaussians cancel.
            log_pz_qz = -0.5 * z.square().sum(-1) + 0.5 * (eps.square() + logvar).sum(-1)
            log_weights.append(log_px_z + log_pz_qz)
        log_weights = torch.cat(log_weights)  # [k, B], float32
        return -(torch.logsumexp(log_weights, dim=0) - math.log(k))

    # -- training ------------------------------------------------------------------------------

    @override
    def _shared_step(self, batch: Batch, stage: str) -> EvalOutput:
        images, targets = batch
        recon, kl, mu = self._terms(images)
        neg_elbo = recon + kl
        loss_per_image = recon + self.kl_weight(self.global_step) * kl
        per_image = {"loss": loss_per_image, "recon": recon, "kl": kl, "neg_elbo": neg_elbo}
        loss = per_image["loss"].mean()
        if stage == "train":
            for name in STAGE_METRICS:
                self.log_step(f"train/{name}", per_image[name].mean(), prog_bar=name == "loss")
            if self.kl_warmup_steps:
                self.log_step("train/kl_weight", torch.tensor(self.kl_weight(self.global_step)))
            return {"loss": loss}
        for name in STAGE_METRICS:  # over the normal images only, in an anomaly run
            self.update_on_normal(getattr(self, f"{stage}_{name}"), per_image[name].detach(), targets)
        if stage == "test" and self.iwae_samples:
            self.update_on_normal(self.test_iwae_nll, self.iwae_nll(images, self.iwae_samples), targets)
        scores = self.latent_scores.scores(mu.detach(), neg_elbo.detach())
        return {"loss": loss, "scores": {**scores, "latent_kl": kl.detach()}}
