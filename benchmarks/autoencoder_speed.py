"""CPU cost of one VAE training step per image: channel widths, upsampling (interpolation + conv vs a
transposed conv) and memory format (NCHW vs channels_last, which AutoEncoder and VAE use), on
MNIST-sized batches of random pixels; the networks of networks/autoencoder.py with the VAE's loss.
Process CPU time, median of repeated steps after a warm-up.

    python benchmarks/autoencoder_speed.py [--threads 1] [--batch 64] [--steps 10]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _shared_data import machine

from lightning_modules.vae import kl_divergence, reparameterize
from networks.autoencoder import ConvDecoder, ConvEncoder


def ms_per_image(channels, upsample: str, memory_format, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    encoder = ConvEncoder((1, 28, 28), channels, 32).to(memory_format=memory_format)
    decoder = ConvDecoder((1, 28, 28), channels, 16, upsample).to(memory_format=memory_format)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()])
    images = torch.rand(batch, 1, 28, 28).contiguous(memory_format=memory_format)
    times = []
    for _ in range(steps + 2):
        started = time.process_time()
        mu, logvar = encoder(images).chunk(2, dim=1)
        logits = decoder(reparameterize(mu, logvar))
        recon = F.binary_cross_entropy_with_logits(logits, images, reduction="none").flatten(1).sum(1)
        loss = (recon + kl_divergence(mu, logvar)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.process_time() - started)
    return statistics.median(times[2:]) / batch * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{machine()}, {args.threads} thread(s), batch {args.batch}: CPU ms per image, forward + backward + Adam")
    print("| channels | upsample | channels_last | NCHW |")
    print("| --- | --- | --- | --- |")
    for channels in ((16, 32, 64), (24, 48, 96), (32, 64, 128)):
        for upsample in ("nearest", "transposed"):
            fast = ms_per_image(channels, upsample, torch.channels_last, args.batch, args.steps)
            plain = ms_per_image(channels, upsample, torch.contiguous_format, args.batch, args.steps)
            print(f"| {list(channels)} | {upsample} | {fast:.2f} | {plain:.2f} |")


if __name__ == "__main__":
    main()
