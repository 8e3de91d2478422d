"""One base class for the errors npuflow reports to users as a single clear line."""


class NpuflowError(Exception):
    """Bad input or a broken promise of a stage; the message names what is at fault."""


class ConfigError(NpuflowError, ValueError):
    """Bad configuration; the message starts with the entry and field at fault."""


# What a command interrupted by Ctrl-C says as its last line: the run's error handler tells an
# interrupted run from a failed one by it (npuflow.report.interrupted).
INTERRUPTED = "interrupted (Ctrl-C); its outputs are not written"
