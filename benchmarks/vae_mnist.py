"""VAE quality on real MNIST: configs/mnist_vae.yaml trained on the shared training digits, tested on
the official 10,000 test digits through the CLI (negative ELBO, reconstruction, KL and the IWAE bound
with the config's K, in nats per image), then the IWAE bound with a large K on a random subset.

    python benchmarks/vae_mnist.py [--epochs 20] [--binarize] [--big-k 5000] [--big-k-images 100] [-- CLI args]
    python benchmarks/vae_mnist.py --run <run dir>   # test an existing run of this script, no fit

--binarize: dynamically binarised MNIST (the literature's setting, Burda et al. 2015). The large-K
bound costs K decoder passes per image, so its cost is measured on a few images first and printed.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from _shared_data import machine, real_mnist_root

from cnnlab.cli import main
from cnnlab.records import read_summary
from datamodules import MNISTDataModule
from lightning_modules import VAE

ROOT = Path(__file__).resolve().parents[1]


def cli(subcommand: str, args: list[str]) -> None:
    sys.argv = ["train.py"]
    main([subcommand, *args])


def latest_test(run: Path) -> dict:
    """The record of the run's latest test (the one just made), from its own evaluation directory."""
    tests = [e for e in read_summary(run).get("evaluations") or [] if e.get("subcommand") == "test"]
    if not tests or tests[-1].get("status") != "finished":
        sys.exit(f"the test left no finished evaluation record in {run / 'summary.json'}")
    return read_summary(tests[-1]["dir"])


def iwae_on(model: VAE, images: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    return torch.cat([model.iwae_nll(part, k) for part in images.split(batch)])


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(len(values))


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--binarize", action="store_true")
    parser.add_argument("--big-k", type=int, default=5000)
    parser.add_argument("--big-k-images", type=int, default=100, help="random test images for the large-K bound")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    parser.add_argument("--run", default=None, help="an existing run directory of this script: test it, skip fit")
    parser.add_argument("overrides", nargs="*", help="more CLI arguments, e.g. --model.beta=2")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data_root = real_mnist_root()
    experiment = "vae_mnist_binarized" if args.binarize else "vae_mnist"
    common = [
        "--config", str(ROOT / "configs" / "mnist_vae.yaml"),
        "--config", str(ROOT / "configs" / "logger" / "csv.yaml"),
        f"--experiment={experiment}",
        f"--data.data_dir={data_root}",
        "--data.download=false",
        f"--data.binarize={str(args.binarize).lower()}",
        f"--trainer.max_epochs={args.epochs}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={args.out}",
        f"--seed_everything={args.seed}",
        *args.overrides,
    ]  # fmt: skip
    if args.run:
        run = Path(args.run)
        summary = json.loads((run / "summary.json").read_text())
        fit_cpu, fit_wall = float("nan"), summary.get("fit_seconds", float("nan"))
    else:
        started = time.process_time(), time.time()
        cli("fit", common)
        fit_cpu, fit_wall = time.process_time() - started[0], time.time() - started[1]
        run = max((Path(args.out) / experiment).glob("*/summary.json"), key=lambda p: p.stat().st_mtime).parent
        summary = json.loads((run / "summary.json").read_text())
    best = summary["best_checkpoint"]
    started = time.process_time()
    cli("test", [*common, f"--ckpt_path={best}"])
    test_cpu = time.process_time() - started
    evaluation = latest_test(run)  # the test's own record: <run>/evaluations/<time>-test/summary.json
    metrics = evaluation["metrics"]
    k_test = evaluation["config"]["model"]["init_args"]["iwae_samples"]  # as the test ran (an override counts)

    # The large-K bound on a random subset of the same test images (binarised from data_seed as in test).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = VAE.load_from_checkpoint(best, map_location=device).eval()
    data = MNISTDataModule(data_dir=data_root, download=False, normalize=False, binarize=args.binarize)
    data.setup("test")
    test_images = data.model_input(data.samples("test")[0])
    subset = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(0))[: args.big_k_images]
    images = test_images[subset].to(device)
    torch.manual_seed(0)
    with torch.inference_mode():
        clock = time.perf_counter if device == "cuda" else time.process_time  # GPU: wall; CPU: CPU time
        unit = "wall" if device == "cuda" else "CPU"
        started = clock()
        iwae_on(model, images[:4], args.big_k, batch=4).cpu()
        per_image = (clock() - started) / 4
        estimate = per_image * len(images) / 60
        print(f"IWAE K={args.big_k}: {per_image:.2f} {unit} s per image; {len(images)} images ~{estimate:.1f} min")
        started = clock()
        big = iwae_on(model, images, args.big_k, batch=4).cpu()
        big_cpu = clock() - started
        small = iwae_on(model, images, k_test, batch=256).cpu()
        elbo = torch.stack([model.per_sample_loss((images, None)) for _ in range(10)]).mean(0).cpu()

    print(f"\n== VAE on {'dynamically binarised' if args.binarize else 'grey-level'} MNIST ({machine()})")
    epochs = summary.get("epochs", args.epochs)  # fewer than asked where --trainer.max_time stopped the fit
    print(f"run: {run}; best checkpoint {Path(best).name} (epoch of best val/loss), {epochs} epochs")
    print(f"fit {fit_cpu / 60:.1f} CPU min ({fit_wall / 60:.1f} wall min); test {test_cpu / 60:.1f} CPU min")
    print("the test split (the 10,000 official test digits), nats per image:")
    recon, kl = metrics["test/recon"], metrics["test/kl"]
    print(f"  test/neg_elbo   {metrics['test/neg_elbo']:.2f}  (recon {recon:.2f} + KL {kl:.2f})")
    print(f"  test/iwae_nll   {metrics['test/iwae_nll']:.2f}  (K={k_test})")
    print(f"random subset of {len(images)} test digits (seed 0), mean +- standard error over images:")
    print(f"  neg ELBO (10 draws)  {mean_se(elbo)[0]:.2f} +- {mean_se(elbo)[1]:.2f}")
    print(f"  IWAE K={k_test:<5}       {mean_se(small)[0]:.2f} +- {mean_se(small)[1]:.2f}")
    big_mean, big_se = mean_se(big)
    print(f"  IWAE K={args.big_k:<5}      {big_mean:.2f} +- {big_se:.2f}  ({big_cpu / 60:.1f} {unit} min)")
    gap = small - big
    print(f"  K={k_test} minus K={args.big_k} (paired)  {mean_se(gap)[0]:.2f} +- {mean_se(gap)[1]:.2f}")
    print(f"  => K={args.big_k} estimate for all test digits: {metrics['test/iwae_nll'] - gap.mean().item():.2f}")


if __name__ == "__main__":
    main_()
