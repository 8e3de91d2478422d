"""The tracking URI: which one a run uses (MLFLOW_TRACKING_URI over the config), and credentials
kept out of it. The URI is a rule parameter, written into the jobs' command lines, their logs and
Snakemake's metadata: an http(s) URI with credentials is refused (MLflow reads them from its own
environment variables, which the jobs inherit), and every URI or message shown has the
credentials of any URI in it hidden (`redacted`)."""

from __future__ import annotations

import os
import re

from npuflow.util.errors import ConfigError

USERNAME, PASSWORD, TOKEN = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"


SCALING_OUT = 'README, "Scaling out"'


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


HIDDEN = "***"


# The user-info of any `scheme://user:password@host` or `scheme://token@host` (SQLAlchemy's
# reading, but a password may hold '@' or '/': it runs to the URI's last '@'), anywhere in a text;
# and query parameters that carry secrets (`?password=…`, S3's `X-Amz-Signature=…`).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?:[^\s/?#@:]*:\S*|[^\s/?#@]+)@")


_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&;](?:[a-z0-9_.-]*(?:password|passwd|pwd|secret|token|signature|credential|api[_-]?key|access[_-]?key)[a-z0-9_.-]*)=)[^&#\s]*"
)


def redacted(text: str) -> str:
    """`text` (a URI, or a message that holds some) with the credentials of every URI in it
    hidden, whatever the scheme: a user, password or token before '@', and secret query values."""
    return _SECRET_QUERY.sub(rf"\g<key>{HIDDEN}", _USERINFO.sub(rf"\g<scheme>{HIDDEN}@", text))


def check_uri(uri: str, where: str) -> str:
    """Refuse an http(s) URI with credentials in it (`https://user:pass@host`), naming where it came
    from: MLflow reads them from its variables. A database URI may hold a password (not every
    driver reads one from elsewhere): it stays in the environment and is shown redacted."""
    if is_server(uri) and redacted(uri) != uri:
        raise ConfigError(
            f"{where}: the tracking URI {redacted(uri)} has credentials in it, which would be written to the jobs' command "
            f"lines, their logs and Snakemake's metadata; give it without them and set {USERNAME} and {PASSWORD} "
            f"(or {TOKEN}) in the environment instead ({SCALING_OUT})"
        )
    return uri


def tracking_uri(configured: str, where: str = "mlflow.tracking_uri") -> str:
    """MLFLOW_TRACKING_URI wins over the configured one (`where` names it), so the same pipeline
    can log to a server. The workflow's jobs get the URI redacted as an argument (so that no file
    Snakemake writes holds a credential) and the real one in MLFLOW_TRACKING_URI."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return check_uri(os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI")
    if f"{HIDDEN}@" in configured or f"={HIDDEN}" in configured:
        raise ConfigError(
            f"{where}: the tracking URI {configured} has its credentials hidden, and MLFLOW_TRACKING_URI, which holds the "
            "real one for the workflow's jobs, is not set"
        )
    return check_uri(configured, where)
