"""Every error a person can act on, and the exit codes the CLI gives them — in one place.

``UserError`` is the base of "what you gave is wrong": a config value, a dataset,
a model name, a LoRA layout, an adapter file. Its message says what is wrong and
what to do, and is shown as it is (CLI exit code 2, a sentence in the app).
Anything else that escapes is a failure of the run or a bug (exit code 1).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1       # training or an export failed (or a bug); the message says what happened
EXIT_BAD_INPUT = 2    # the input is wrong; the message says what to change


class UserError(ValueError):
    """What the person gave is wrong; the message says what and what to do."""


class ConfigError(UserError):
    """A configuration value is wrong; the message says which and what to do."""


class DataError(UserError):
    """A dataset cannot be used as given; the message says what is wrong and what to do."""


class ModelError(UserError):
    """A model could not be built; the message names the model, why, and what to do."""


class LoraError(UserError):
    """A LoRA operation was refused; the message says why."""


class AdapterError(UserError):
    """An adapter file is missing, damaged or does not fit; the message says which."""


class DamagedRun(UserError):
    """A run folder's own files (config.json, split.json, ...) are missing or wrong-shaped;
    the message names the file and what is wrong."""


class ExportError(RuntimeError):
    """An export could not be made or failed its own check; the message says why."""


class TrainingFailed(RuntimeError):
    """Raised inside the training loop with a message meant for the person training."""


class StopRequested(Exception):
    """Raised inside the training loop when a stop was asked for; the loop saves, then ends."""


# What the CLI and the app show as the person's own mistake (exit code 2). A missing file
# named on the command line counts too.
BAD_INPUT = (UserError, FileNotFoundError)


def user_errors() -> tuple[type, ...]:
    """Errors caused by what the user gave (shown as they are; CLI exit code 2)."""
    return (UserError,)
