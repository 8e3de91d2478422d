"""The `npuflow` commands, one class each, in pipeline order (npuflow.cli.base has the registry and
the shared arguments). Importing this package registers them, module by module in the order below,
which is the order of `npuflow --help`. Stage modules are imported inside `run`, so
`npuflow <command> --help` stays quick and a command imports only what its stage needs (the
per-stage conda environments hold just that)."""

# The import order is the commands' order in `npuflow --help`: not sorted.
# isort: off
from npuflow.cli.commands import inputs  # noqa: F401  check-config, dataset
from npuflow.cli.commands import model_stages  # noqa: F401  fetch … analyse
from npuflow.cli.commands import target_stages  # noqa: F401  mixed, build
from npuflow.cli.commands import results  # noqa: F401  init-mlflow, track, plot, report
from npuflow.cli.commands import sim_tools  # noqa: F401  sim-validate, sim-fit
# isort: on
