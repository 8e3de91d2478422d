"""The MLflow tracking server as npuflow reaches it, without importing MLflow (the URI and its
credentials: npuflow.tracking.uri; reading a failed request's answer: npuflow.tracking.answers).

- Credentials come from MLflow's own environment variables (MLFLOW_TRACKING_USERNAME and
  MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN), which the jobs inherit from `snakemake`'s
  environment.
- `preflight` asks a server one question before any job runs and turns each way it can fail into
  one line: nothing there (at once), no answer within a bounded wait (NPUFLOW_TRACKING_WAIT_S,
  60 s by default, a line every 10 s while it waits: a loaded server is slow, not gone), a login
  refused or missing, a host name it refuses, an experiment the user may not read, an error of
  the server itself (5xx, with its message), something that is not MLflow. A store on this
  machine (an SQLite file, a folder) is checked for being writable instead, in milliseconds; a
  database server for listening (a refused connection fails at once).
- `answered_text` says what a server answered a logging job's failed request (asking it again
  where MLflow's retries dropped the message).
- `bound_http_retries` caps MLflow's HTTP retries (7, over about 4 minutes, by default), so a
  logging job whose server went away fails in seconds and the next run logs what is missing."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from npuflow.tracking.answers import server_message, status_text
from npuflow.tracking.uri import PASSWORD, SCALING_OUT, TOKEN, USERNAME, is_server, redacted
from npuflow.util.errors import ConfigError, NpuflowError

# How long the pre-flight waits for a server that accepted the connection but has not answered
# (a loaded machine: MLflow's basic-auth app hashes the password on each request), and how often it
# says that it waits. A refused connection fails at once whatever this is.
WAIT_ENV = "NPUFLOW_TRACKING_WAIT_S"
WAIT_S = 60.0
WAIT_REPORT_S = 10.0
# A database server (postgresql://, mysql://…) is only asked whether it listens; MLflow itself
# retries creating its engine for minutes.
DATABASE_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}
# MLflow's HTTP settings (its environment variables) unless the user set them: 3 retries after
# 0, ~4 and ~8 s (backoff factor 2, plus up to 1 s of jitter each), 30 s for one request to answer.
# A server that has gone (connection refused) fails a request in about 14 s.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingServerError(NpuflowError):
    """The tracking server cannot be used as configured; the message says why and what to do."""


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


def wait_seconds() -> float:
    """The pre-flight's bounded wait: NPUFLOW_TRACKING_WAIT_S, else WAIT_S."""
    given = os.environ.get(WAIT_ENV, "").strip()
    if not given:
        return WAIT_S
    try:
        value = float(given)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(f"{WAIT_ENV}: expected a number of seconds above 0, got {given!r}")
    return value


def _unreachable(uri: str, error: BaseException, timeout: float) -> str:
    reason = getattr(error, "reason", error)
    if isinstance(reason, TimeoutError | socket.timeout):
        return (
            f"MLflow tracking server {uri}: no answer within {timeout:g} s although it accepts connections (overloaded, stuck, "
            f"or a proxy in between that does not pass the request on); check it, or wait longer with {WAIT_ENV}=<seconds>"
        )
    if isinstance(reason, ConnectionRefusedError):
        why = "connection refused: nothing listens there"
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
    first = server_message(body, 160)
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
    if status >= 500:
        return (
            f"MLflow tracking server {uri} answered HTTP {status_text(status)}{': ' + first if first else ''} "
            "(an error of the server or a proxy before it, not of the request: its log says more)"
        )
    if status in (404, 405):
        return f"{uri} answered HTTP {status} to MLflow's REST API ({first}): is it an MLflow tracking server?"
    return f"MLflow tracking server {uri} answered HTTP {status_text(status)}{': ' + first if first else ''}"


def _say(line: str) -> None:
    print(f"npuflow: {line}", file=sys.stderr, flush=True)


def _answer_within(request: urllib.request.Request, uri: str, shown: str, wait: float, interval: float, say) -> tuple[int, str]:
    """(status, body) of the request, waiting at most `wait` seconds for it and saying every
    `interval` seconds that it waits; raises what urlopen raised (a refused connection at once),
    or TimeoutError when the wait is over."""
    outcome: dict = {}

    def ask():
        try:
            with urllib.request.urlopen(request, timeout=wait, context=_tls_context(uri)) as answer:
                outcome["answer"] = (answer.status, answer.read(1_000_000).decode("utf-8", "replace"))
        except urllib.error.HTTPError as e:
            outcome["answer"] = (e.code, e.read(2000).decode("utf-8", "replace"))
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    asking = threading.Thread(target=ask, name="npuflow-preflight", daemon=True)
    start = time.monotonic()
    asking.start()
    while True:
        left = wait - (time.monotonic() - start)
        asking.join(max(0.0, min(interval, left)))
        if not asking.is_alive():
            break
        waited = time.monotonic() - start
        if waited >= wait:
            raise TimeoutError(f"no answer within {wait:g} s")
        say(f"waiting for {shown} (no answer yet, {waited:.0f} s of {wait:g} s)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["answer"]


def preflight(uri: str, experiment: str, timeout: float | None = None, interval: float = WAIT_REPORT_S, say=_say) -> str | None:
    """Ask the tracking server for the experiment, as the logging jobs will (with their
    credentials), waiting at most `timeout` seconds (default: NPUFLOW_TRACKING_WAIT_S, else
    WAIT_S) and saying through `say` every `interval` seconds that it waits; raise
    TrackingServerError with one line saying what is wrong. A store that is no server (SQLite, a
    folder, a database) is checked as `check_store` does; returns what it found, or None there."""
    if not is_server(uri):
        check_store(uri)
        return None
    if bool(os.environ.get(USERNAME)) != bool(os.environ.get(PASSWORD)):
        given, missing = (USERNAME, PASSWORD) if os.environ.get(USERNAME) else (PASSWORD, USERNAME)
        raise TrackingServerError(f"{given} is set but {missing} is not: MLflow sends no login without both ({SCALING_OUT})")
    wait = wait_seconds() if timeout is None else timeout
    headers, who = _login()
    shown = redacted(uri)  # for the messages (a token may sit in the query)
    query = urllib.parse.urlencode({"experiment_name": experiment})
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}", headers=headers)
    try:
        status, body = _answer_within(request, uri, shown, wait, interval, say)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise TrackingServerError(_unreachable(shown, e, wait)) from None
    if status == 200:
        try:
            found = json.loads(body).get("experiment", {})
        except (ValueError, AttributeError):
            raise TrackingServerError(
                f"{shown} answered the MLflow REST API with something that is not its JSON "
                f"({server_message(body, 120)}): is it an MLflow tracking server?"
            ) from None
        return f"experiment {experiment!r} (id {found.get('experiment_id')}) at {shown}"
    if status == 404 and "RESOURCE_DOES_NOT_EXIST" in body:
        return f"{shown}, where the first logging job creates experiment {experiment!r}"
    raise TrackingServerError(_refusal(shown, experiment, status, body, who))


# ------------------------------------------------------------------ stores that are no server


def local_store(uri: str) -> tuple[Path, str] | None:
    """(path, kind) of a tracking store on this machine: ("database", its file) for SQLite,
    ("folder", it) for MLflow's file store (a plain path or file:); None for any other."""
    if uri.startswith("sqlite:"):
        rest = uri[len("sqlite:") :]
        path = urllib.parse.unquote(rest[3:].split("?")[0]) if rest.startswith("///") else ""
        return (Path(path), "database") if path and path != ":memory:" else None
    if uri.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path)), "folder"
    if "://" not in uri and uri:
        return Path(uri), "folder"
    return None


def _writable_problem(folder: Path) -> str | None:
    """Why files cannot be made in `folder` (created if missing), or None: tried for real, with a
    file made and removed in the nearest folder that exists (permissions, a read-only file
    system, root's rights and ACLs all answer as they would for the store)."""
    existing = folder
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is {'a file' if existing.exists() else 'a broken link'}, not a folder"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".npuflow-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"cannot make files in {existing} ({e.strerror or e})"
    return None


def check_store(uri: str) -> None:
    """A tracking store that is no server, checked in milliseconds before MLflow tries it (MLflow
    retries creating a database engine for about two minutes): a local store must be writable,
    its path named if not; a database server must listen (a refused connection fails at once)."""
    shown = redacted(uri)
    found = local_store(uri)
    if found is not None:
        path, kind = found
        shown_path = path if path.is_absolute() else Path.cwd() / path
        if kind == "database" and path.is_dir():
            problem = f"{shown_path} is a folder, not a database file"
        elif kind == "folder" and path.exists() and not path.is_dir():
            problem = f"{shown_path} is a file, not a folder"
        else:
            problem = _writable_problem((path.parent if kind == "database" else path).absolute())
            if problem is None and kind == "database" and path.exists():
                try:
                    with open(path, "r+b"):
                        pass
                except OSError as e:
                    problem = e.strerror or str(e)
            if problem:
                problem = f"cannot write {shown_path}: {problem}"
        if problem:
            raise TrackingServerError(
                f"MLflow tracking store {shown}: {problem}; set mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to a place this user can write"
            )
        return
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in DATABASE_PORTS:
        parts = urllib.parse.urlsplit(uri)
        try:
            host, port = parts.hostname, parts.port or DATABASE_PORTS[scheme]
        except ValueError:
            return  # MLflow's driver names what is wrong with it
        if not host:
            return  # a Unix socket (host in the query): the driver finds it
        try:
            socket.create_connection((host, port), timeout=min(wait_seconds(), 10.0)).close()
        except OSError as e:
            why = (
                "connection refused: nothing listens there"
                if isinstance(e, ConnectionRefusedError)
                else f"host name not found: {e.strerror}"
                if isinstance(e, socket.gaierror)
                else "no answer in time"
                if isinstance(e, TimeoutError | socket.timeout)
                else str(e)
            )
            raise TrackingServerError(
                f"no database server answers at {host}:{port} for the tracking store {shown} ({why}); start it, "
                "or set MLFLOW_TRACKING_URI to the store you use"
            ) from None


def server_says(uri: str, timeout: float = 5.0) -> tuple[int, str] | None:
    """(status, message) the server answers now with an error of its own (5xx), for a failure
    whose answer MLflow's retries dropped: one plain request (the pre-flight's), no retries; None
    where it answers that one, or cannot be asked."""
    headers, _ = _login()
    query = urllib.parse.urlencode({"experiment_name": "Default"})
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls_context(uri)):
            return None
    except urllib.error.HTTPError as e:
        return (e.code, server_message(e.read(2000).decode("utf-8", "replace"))) if e.code >= 500 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def answered_text(uri: str, status: int, message: str | None, doing: str) -> str:
    """`the MLflow tracking server … answered HTTP 500 Internal Server Error while …: <its message>`;
    where MLflow's retries dropped the message (None), what the server answers when asked again."""
    said = f": {message}" if message else ""
    if message is None:
        now = server_says(uri)
        if now is None or (not now[1] and now[0] == status):
            said = " (its log says why)"
        elif now[0] == status:
            said = f" (asked again, it says: {now[1]})"
        else:
            said = f" (asked again, it answers HTTP {status_text(now[0])}{': ' + now[1] if now[1] else ''})"
    return f"the MLflow tracking server {redacted(uri)} answered HTTP {status_text(status)} while {doing}{said}"
