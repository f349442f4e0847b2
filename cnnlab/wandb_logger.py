"""The W&B logger of record: works with no account (offline by itself) and fails in plain words."""

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info

from cnnlab.errors import CnnlabError


def wandb_credentials_found() -> bool:
    """True where W&B would find an API key: WANDB_API_KEY or a .netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, offline by itself where no credentials are found.

    Args:
        offline: None decides from the environment: WANDB_MODE if set, else online only with an
            API key (WANDB_API_KEY or `wandb login`). Offline runs sync later with `wandb sync`.
        (the rest as Lightning's WandbLogger; extra wandb.init arguments go in dict_kwargs)
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = ".",
        version: str | None = None,
        offline: bool | None = None,
        project: str = "cnnlab",
        log_model: bool | str = False,
        prefix: str = "",
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        **kwargs,
    ) -> None:
        if offline is None:
            mode = os.environ.get("WANDB_MODE", "")
            offline = mode in ("offline", "dryrun") or (mode != "online" and not wandb_credentials_found())
            if offline and mode not in ("offline", "dryrun"):
                rank_zero_info(
                    f"cnnlab: no W&B credentials found (WANDB_API_KEY or `wandb login`): logging offline "
                    f"into {save_dir}/wandb/. Upload later with `wandb sync {save_dir}/wandb/offline-run-*`."
                )
        for key, value in (("group", group), ("job_type", job_type), ("tags", tags)):
            if value is not None:
                kwargs[key] = value
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version,
            offline=offline,
            project=project,
            log_model=log_model,
            prefix=prefix,
            **kwargs,
        )

    @property
    def experiment(self):
        try:
            return super().experiment
        except Exception as err:  # wandb raises its own assorted types: network, auth, usage
            raise CnnlabError(
                f"W&B could not start a run: {err}. Nothing has been trained yet. Check the "
                "entity/project and your network, or log offline with WANDB_MODE=offline (sync later with "
                "`wandb sync`), or choose another logger: --config configs/logger/csv.yaml."
            ) from err
