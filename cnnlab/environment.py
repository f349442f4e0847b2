"""The environment variables cnnlab's processes hand to each other, in one place (no torch here)."""

RUN_DIR_ENV = "CNNLAB_RUN_DIR"  # rank zero hands its run directory to the DDP processes it starts
OUTPUT_DIR_ENV = "CNNLAB_OUTPUT_DIR"  # ... and the directory of this command's record
FIGURES_ENV = "CNNLAB_FIGURES"  # "0": figure callbacks draw nothing (a sweep's seeds after the first)
# W&B labels of a sweep's seed runs, used where the logger is W&B and the config sets none
WANDB_GROUP_ENV = "CNNLAB_WANDB_GROUP"
WANDB_JOB_TYPE_ENV = "CNNLAB_WANDB_JOB_TYPE"
WANDB_TAGS_ENV = "CNNLAB_WANDB_TAGS"
SPAWNED_AT_ENV = "CNNLAB_SEEDS_SPAWNED_AT"  # the launcher's clock when it started a worker
DEBUG_ENV = "CNNLAB_DEBUG"  # set: tracebacks instead of one-paragraph errors
