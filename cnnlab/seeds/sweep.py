"""What a sweep is: its name, config files, model seeds and overrides; its identity (what makes two
invocations the same sweep: the configs' resolved paths and contents and the overrides' values, not
how they were typed); and what one seed gets (its CLI arguments, and the W&B labels of its runs).

No torch here: the launcher starts in a blink.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cnnlab.command_line import locate_config, short
from cnnlab.environment import FIGURES_ENV, WANDB_GROUP_ENV, WANDB_JOB_TYPE_ENV, WANDB_TAGS_ENV
from cnnlab.errors import CnnlabError
from cnnlab.run_dir import EVALUATIONS, RUNS_ROOT
from cnnlab.shell_paths import offline_dirs, shell_path

RESERVED = {
    "--seed_everything": "the model seed is the launcher's: give the seeds with --seeds",
    "--experiment": "the sweep's runs go in <root>/<name>/: give the name with --name",
    "--trainer.default_root_dir": "the sweep's runs go in <root>/<name>/: give the root with --root",
    "--ckpt_path": "every seed trains from scratch and tests its own best checkpoint",
    "--print_config": "it would print instead of training",
    "--help": "it would print instead of training",
}


@dataclass
class Sweep:
    """What a user asks `cnnlab-seeds run` for."""

    name: str
    configs: list[str]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    root: Path = Path(RUNS_ROOT)
    jobs: int | None = None  # the local pool: 1 when not given; Ray: the seeds the cluster can hold at once
    threads: int | None = None
    timeout: float | None = None
    gpus: list[str] | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "seed"
    retry_failed: bool = True
    figures: str = "first"  # draw figures for the first seed ('first'), every seed ('all') or none ('none')
    backend: str = "local"  # 'local': worker processes of this machine; 'ray': Ray actors on a cluster
    address: str | None = None  # Ray: 'auto', HOST:PORT, or None for RAY_ADDRESS or a local instance
    cpus_per_seed: int | None = None  # Ray: CPUs each seed asks for (default 1)
    gpus_per_seed: float | None = None  # Ray: GPUs each seed asks for, fractions pack seeds on one GPU (default 0)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        if not re.fullmatch(r"[A-Za-z0-9][\w.+-]*", self.name):
            raise CnnlabError(
                f"--name {self.name!r} is not usable as a folder name. Use letters, digits, '.', '_', '+' "
                "or '-', starting with a letter or digit (e.g. mnist-cnn)."
            )
        if self.backend not in ("local", "ray"):
            raise CnnlabError(f"--backend is {self.backend!r}; give local (this machine's processes) or ray.")
        if self.jobs is not None and self.jobs < 1:
            raise CnnlabError(f"--jobs is {self.jobs}; give at least 1 seed at a time.")
        if self.backend == "local":
            self.jobs = self.jobs or 1
            ray_only = {"--address": self.address, "--cpus-per-seed": self.cpus_per_seed}
            ray_only["--gpus-per-seed"] = self.gpus_per_seed
            given = [flag for flag, value in ray_only.items() if value is not None]
            if given:
                raise CnnlabError(
                    f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --backend ray (a Ray cluster); the "
                    "local pool runs --jobs worker processes on this machine and shares out --gpus. Add --backend ray, "
                    "or leave them out."
                )
        else:
            self.check_ray_settings()
        if self.threads is not None and self.threads < 1:
            raise CnnlabError(
                f"--threads is {self.threads}; give at least 1 torch thread per worker, or leave it out "
                "(OMP_NUM_THREADS where set, else the CPU cores shared out over --jobs)."
            )
        if self.timeout is not None and self.timeout <= 0:
            raise CnnlabError(f"--timeout is {self.timeout}; give seconds per seed above 0, or leave it out.")
        if self.figures not in ("first", "all", "none"):
            raise CnnlabError(f"--figures is {self.figures!r}; give first, all or none.")
        # configs/... is also found with the installed package, as train.py finds it (cnnlab/command_line.py).
        self.configs = [locate_config(str(config)) for config in self.configs]
        for config in self.configs:
            if not Path(config).is_file():
                raise CnnlabError(
                    f"--config {config}: no such file. Give an experiment YAML, e.g. configs/mnist_classifier.yaml."
                )
        check_overrides(self.overrides)

    def check_ray_settings(self) -> None:
        if self.gpus is not None:
            raise CnnlabError(
                "--gpus shares this machine's GPUs out to the local pool's workers; on --backend ray each seed asks "
                "Ray for GPUs and Ray picks them (it sets CUDA_VISIBLE_DEVICES): give --gpus-per-seed F instead."
            )
        self.cpus_per_seed = 1 if self.cpus_per_seed is None else self.cpus_per_seed
        self.gpus_per_seed = 0.0 if self.gpus_per_seed is None else float(self.gpus_per_seed)
        if self.cpus_per_seed < 1:
            raise CnnlabError(f"--cpus-per-seed is {self.cpus_per_seed}; give at least 1 CPU per seed.")
        gpus = self.gpus_per_seed
        if gpus < 0 or (gpus > 1 and not gpus.is_integer()):
            raise CnnlabError(
                f"--gpus-per-seed is {gpus:g}; give 0 (CPU), a fraction below 1 (that many seeds share one GPU, "
                "e.g. 0.5 for two) or a whole number of GPUs, as Ray allocates them."
            )
        if self.threads is None:
            self.threads = self.cpus_per_seed
        self.gpus = []  # Ray gives each seed its GPUs; the local pool's share-out (and nvidia-smi) is not asked

    @property
    def dir(self) -> Path:
        return self.root / self.name

    def identity(self) -> dict:
        """What makes two invocations the same sweep: each config file's resolved path and contents, and
        each overridden setting's value (`--k=v` and `--k v` alike, the last one given winning). The
        seed range may grow; jobs, timeout, devices and figures may change."""
        configs = [
            {"path": str(Path(c).resolve()), "sha256": hashlib.sha256(Path(c).read_bytes()).hexdigest()}
            for c in self.configs
        ]
        return {"configs": configs, "overrides": override_values(self.overrides)}

    def args(self, seed: int) -> list[str]:
        """The CLI arguments of one seed (without the subcommand): the user's, then the sweep's."""
        args = [f"--config={c}" for c in self.configs]
        args += ["--trainer.enable_progress_bar=false", *self.overrides]
        args += [f"--experiment={self.name}", f"--trainer.default_root_dir={self.root}"]
        # last, so nothing in a config file or an override can change it
        args.append(f"--seed_everything={seed}")
        return args

    def env(self, seed: int) -> dict[str, str]:
        """The environment of one seed's run: its W&B labels, and whether its figure callbacks draw
        (metrics they compute, such as an anomaly report's AUROC, are logged either way)."""
        draws = self.figures == "all" or (self.figures == "first" and seed == min(self.seeds))
        return {**wandb_labels(self.name, self.configs, self.job_type, self.tags), FIGURES_ENV: "1" if draws else "0"}

    def wandb_sync_command(self, run_ids: list[str]) -> str | None:
        """One `wandb sync` that uploads the offline W&B folders of the sweep's runs `run_ids` (the
        registry's: not the abandoned attempts of an interrupted seed), None where there is none: each
        seed's fit, then the tests that logged into its run, which `wandb sync` appends to it (files of
        one run are synced in order of start time; cnnlab/wandb_logger.py). Where those are every folder
        in the runs' own directories it is two globs, one short line for any number of seeds; else (an
        abandoned attempt beside them, or WANDB_DIR, where other runs' folders lie too) the folders by name."""
        globs = ("*/wandb", f"*/{EVALUATIONS}/*/wandb")
        roots = [root for pattern in globs for root in self.dir.glob(pattern)]
        if os.environ.get("WANDB_DIR"):
            roots.append(Path(os.environ["WANDB_DIR"]) / "wandb")
        wanted = offline_dirs(set(run_ids), roots)
        if not wanted:
            return None
        every = [folder for root in roots for folder in root.glob("offline-run-*") if folder.is_dir()]
        if len(wanted) == len(every) and not os.environ.get("WANDB_DIR"):
            present = [g for g in globs if any(self.dir.glob(f"{g}/offline-run-*"))]
            return "wandb sync " + " ".join(f"{shell_path(self.dir)}/{g}/offline-run-*" for g in present)
        return "wandb sync " + " ".join(shell_path(folder) for folder in wanted)


def wandb_labels(group: str, configs: list[str], job_type: str, tags: list[str]) -> dict[str, str]:
    """W&B labels of a seed's runs: group = the sweep, its job type, tags naming the configs."""
    tags = ["cnnlab-seeds", *(Path(c).stem for c in configs), *tags]
    return {WANDB_GROUP_ENV: group, WANDB_JOB_TYPE_ENV: job_type, WANDB_TAGS_ENV: json.dumps(tags)}


def wandb_labels_from_env() -> dict:
    """The labels a launcher (or `cnnlab-seeds one`) set for this process's runs, as WandbLogger arguments."""
    labels = {}
    if os.environ.get(WANDB_GROUP_ENV):
        labels["group"] = os.environ[WANDB_GROUP_ENV]
    if os.environ.get(WANDB_JOB_TYPE_ENV):
        labels["job_type"] = os.environ[WANDB_JOB_TYPE_ENV]
    if os.environ.get(WANDB_TAGS_ENV):
        labels["tags"] = json.loads(os.environ[WANDB_TAGS_ENV])
    return labels


def override_values(overrides: list[str]) -> dict:
    """`--k=v`, `--k v` -> {k: v} with v read as YAML (so `1`, `1 ` and `'1'` on a shell agree) and k
    without jsonargparse's `init_args` levels; the last given wins, as in the CLI."""
    values: dict = {}
    i = 0
    while i < len(overrides):
        token = overrides[i]
        key, eq, value = token.partition("=")
        if not eq and i + 1 < len(overrides) and not overrides[i + 1].startswith("--"):
            value, i = overrides[i + 1], i + 1
        try:
            parsed = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            parsed = value
        values[short(key.lstrip("-"))] = parsed
        i += 1
    return values


def parse_seeds(text: str) -> list[int]:
    """'0-99', '3', '0,5,10-19' -> sorted distinct seeds."""
    seeds: set[int] = set()
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise CnnlabError(
                f"--seeds {text!r}: could not read {part!r}. Give seeds as a range and/or a list of "
                "non-negative integers, e.g. 0-99 or 0,1,2 or 0-9,100-109."
            )
        seeds.update(range(int(match[1]), int(match[2] or match[1]) + 1))
    if max(seeds) >= 2**32:
        raise CnnlabError(f"--seeds {text!r}: seeds must be below 2**32 (numpy's limit), got {max(seeds)}.")
    return sorted(seeds)


def check_overrides(overrides: list[str]) -> None:
    for token in overrides:
        key = token.split("=", 1)[0]
        if key in RESERVED or key == "-h":
            raise CnnlabError(
                f"{key} cannot be passed to a seed sweep: {RESERVED.get(key, RESERVED['--help'])}. Remove it; "
                "every other --model/--data/--trainer override is passed to each seed as given."
            )
