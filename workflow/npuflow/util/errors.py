"""One base class for the errors npuflow reports to users as a single clear line."""


class NpuflowError(Exception):
    """Bad input or a broken promise of a stage; the message names what is at fault."""


class ConfigError(NpuflowError, ValueError):
    """Bad configuration; the message starts with the entry and field at fault."""
