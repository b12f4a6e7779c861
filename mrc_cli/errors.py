"""Exceptions a user can see: each message names the file, the record, the problem and what to do."""


class MrcError(Exception):
    """Base class; the CLI prints `Error: <message>` and exits 1 without a traceback."""


class DataError(MrcError):
    """A data file is unreadable, of the wrong shape, or unusable for the requested job."""


class ConfigError(MrcError):
    """A config file, flag or override is invalid."""


class CheckpointError(MrcError):
    """A checkpoint or model folder is missing, incomplete or unsafe to load."""


class TrainingError(MrcError):
    """Training cannot go on (e.g. the loss became NaN)."""


class Interrupted(MrcError):
    """SIGINT/SIGTERM stopped the command. Not a failure: the CLI prints the message without "Error:" and exits as a
    shell reports a process that signal ended (128 + its number: 130 for Ctrl-C, 143 for SIGTERM), so a requeue
    script tells a stopped command from a failed one; 1 where the signal reached another process."""

    def __init__(self, message: str, signal_number: int | None = None):
        super().__init__(message)
        self.exit_code = 128 + signal_number if signal_number else 1


class TrainingInterrupted(Interrupted):
    """A training run stopped by SIGINT/SIGTERM, after saving a checkpoint."""
