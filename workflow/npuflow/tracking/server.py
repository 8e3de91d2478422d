"""The MLflow tracking server as npuflow reaches it, without importing MLflow.

- The URI never carries credentials: it is a rule parameter, so it is written into the jobs'
  command lines, their logs and Snakemake's metadata. Credentials come from MLflow's own
  environment variables (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or
  MLFLOW_TRACKING_TOKEN), which the jobs inherit from `snakemake`'s environment.
- `preflight` asks a server one question before any job runs (a few seconds at most) and turns
  each way it can fail into one line: nothing there, a login refused or missing, a host name it
  refuses, an experiment the user may not read, something that is not MLflow.
- `bound_http_retries` caps MLflow's HTTP retries (7, over about 4 minutes, by default), so a
  logging job whose server went away fails in seconds and the next run logs what is missing."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request

from npuflow.util.errors import ConfigError, NpuflowError

USERNAME, PASSWORD, TOKEN = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"
PREFLIGHT_TIMEOUT_S = 5.0
# MLflow's HTTP settings (its environment variables) unless the user set them: 3 retries after
# 0, ~4 and ~8 s (backoff factor 2, plus up to 1 s of jitter each), 30 s for one request to answer.
# A server that has gone (connection refused) fails a request in about 14 s.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
SCALING_OUT = 'README, "Scaling out"'


class TrackingServerError(NpuflowError):
    """The tracking server cannot be used as configured; the message says why and what to do."""


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


def bound_http_retries() -> None:
    """MLflow's HTTP retries and timeout as HTTP_DEFAULTS says, where the user has not set them
    (MLflow reads its variables at each request)."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _login() -> tuple[dict, str]:
    """The Authorization header MLflow would send (basic credentials before a token, as MLflow
    chooses) and who it names, for the messages."""
    user, password, token = os.environ.get(USERNAME), os.environ.get(PASSWORD), os.environ.get(TOKEN)
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}, f"user {user!r} ({USERNAME})"
    if token:
        return {"Authorization": f"Bearer {token}"}, f"the token in {TOKEN}"
    return {}, ""


def _tls_context(uri: str) -> ssl.SSLContext | None:
    if not uri.startswith("https://"):
        return None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)


def _unreachable(uri: str, error: BaseException, timeout: float) -> str:
    reason = getattr(error, "reason", error)
    if isinstance(reason, ConnectionRefusedError):
        why = "connection refused: nothing listens there"
    elif isinstance(reason, TimeoutError | socket.timeout):
        why = f"no answer within {timeout:g} s"
    elif isinstance(reason, socket.gaierror):
        why = f"host name not found: {reason.strerror}"
    elif isinstance(reason, ssl.SSLCertVerificationError):
        return (
            f"MLflow tracking server {uri}: its TLS certificate is not trusted ({reason.verify_message}); "
            "set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA bundle that signed it"
        )
    else:
        why = str(reason)
    return (
        f"no MLflow tracking server answers at {uri} ({why}); start it, or set MLFLOW_TRACKING_URI to the one you use "
        f"({SCALING_OUT}); unset MLFLOW_TRACKING_URI logs to the config's mlflow.tracking_uri instead"
    )


def _refusal(uri: str, experiment: str, status: int, body: str, who: str) -> str:
    first = body.strip().splitlines()[0][:160] if body.strip() else ""
    if status == 401:
        if who:
            return (
                f"MLflow tracking server {uri} refused the login of {who} (401 Unauthorized): wrong user name or password; "
                f"check {USERNAME} and {PASSWORD}"
            )
        return f"MLflow tracking server {uri} asks for a login (401 Unauthorized) and none is set: export {USERNAME} and {PASSWORD} ({SCALING_OUT})"
    if status == 403 and "Invalid Host header" in body:
        host = urllib.parse.urlsplit(uri).netloc
        return f'MLflow tracking server {uri} refuses the host name {host} (403: {first}); start it with --allowed-hosts "{host}" ({SCALING_OUT})'
    if status == 403:
        return (
            f"MLflow tracking server {uri}: {who or 'an anonymous user'} may not read the experiment {experiment!r} (403: {first}); "
            f"ask the server's admin for EDIT permission on it ({SCALING_OUT})"
        )
    return f"{uri} answered HTTP {status} to MLflow's REST API ({first}): is it an MLflow tracking server?"


def preflight(uri: str, experiment: str, timeout: float = PREFLIGHT_TIMEOUT_S) -> str | None:
    """Ask the tracking server for the experiment, as the logging jobs will (with their
    credentials); raise TrackingServerError with one line saying what is wrong. Returns what it
    found, or None for a store that is no server (SQLite, a folder)."""
    if not is_server(uri):
        return None
    if bool(os.environ.get(USERNAME)) != bool(os.environ.get(PASSWORD)):
        given, missing = (USERNAME, PASSWORD) if os.environ.get(USERNAME) else (PASSWORD, USERNAME)
        raise TrackingServerError(f"{given} is set but {missing} is not: MLflow sends no login without both ({SCALING_OUT})")
    headers, who = _login()
    shown = redacted(uri)  # for the messages (a token may sit in the query)
    query = urllib.parse.urlencode({"experiment_name": experiment})
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls_context(uri)) as answer:
            found = json.load(answer).get("experiment", {})
            return f"experiment {experiment!r} (id {found.get('experiment_id')}) at {shown}"
    except urllib.error.HTTPError as e:
        body = e.read(2000).decode("utf-8", "replace")
        if e.code == 404 and "RESOURCE_DOES_NOT_EXIST" in body:
            return f"{shown}, where the first logging job creates experiment {experiment!r}"
        raise TrackingServerError(_refusal(shown, experiment, e.code, body, who)) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise TrackingServerError(_unreachable(shown, e, timeout)) from None


def connection_lost(error: BaseException) -> str | None:
    """Why an MLflow request failed, where the cause is the connection (not the request): the
    server went away, or stopped answering. None for any other failure."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        name = type(error).__name__
        if name in ("ConnectionError", "MaxRetryError", "NewConnectionError", "ConnectTimeoutError", "ReadTimeout", "ConnectTimeout"):
            text = str(error)
            if "Connection refused" in text:
                return "connection refused"
            if "timed out" in text.lower() or "Timeout" in name:
                return "no answer in time"
            return "connection lost"
        if isinstance(error, ConnectionError):
            return "connection lost"
        error = error.__cause__ or error.__context__
    return None
