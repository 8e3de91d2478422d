"""Reading a failed MLflow request: the HTTP answer a server gave (its status and message, on one
line, credentials hidden) told apart from a lost connection, so that a logging job says which."""

from __future__ import annotations

import html
import http
import json
import re

from npuflow.tracking.uri import redacted


def status_text(status: int) -> str:
    """`500 Internal Server Error`: the code and its standard phrase."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def server_message(body: str, limit: int = 300) -> str:
    """What a server said in an error answer, on one line: MLflow's `{"error_code", "message"}`,
    else the text of an HTML page (or its title, where it has no other) or the body's first line;
    credentials hidden."""
    body = (body or "").strip()
    text = ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and ("message" in data or "error_code" in data):
        text = ": ".join(str(data[k]) for k in ("error_code", "message") if data.get(k))
    elif body.startswith("<") or "<html" in body[:200].lower():
        # The page's text (its title only where it has none: the title repeats the status)
        title = re.search(r"(?is)<title[^>]*>(.*?)</title>", body)
        rest = " ".join(html.unescape(re.sub(r"(?is)<(script|style|title)[^>]*>.*?</\1>|<[^>]+>", " ", body)).split())
        text = rest or (" ".join(html.unescape(title[1]).split()) if title else "")
    else:
        text = " ".join(body.splitlines()[0].split()) if body else ""
    text = redacted(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


# urllib3's retries of an answer in MLflow's retry list (408, 429, 5xx), run out: the body is gone.
_RETRIED_ANSWER = re.compile(r"too many (\d{3}) error responses")


# MLflow's message for an answer whose body is not its JSON.
_OTHER_ANSWER = re.compile(r"failed with error code (\d{3}) != \d{3}\. Response body: '(.*)'", re.S)


def http_answer(error: BaseException) -> tuple[int, str | None] | None:
    """(status, the server's message or None where MLflow's retries dropped it) where an MLflow
    request failed because the server answered with an error; None for any other failure."""
    for e in _chain(error):
        response = getattr(e, "response", None)
        if isinstance(getattr(response, "status_code", None), int) and response.status_code >= 400:
            return response.status_code, server_message(response.text)  # requests' HTTPError
        text = str(e)
        found = _RETRIED_ANSWER.search(text)
        if found:
            return int(found[1]), None
        found = _OTHER_ANSWER.search(text)
        if found:
            return int(found[1]), server_message(found[2])
        if type(e).__name__ == "RestException" and hasattr(e, "get_http_status_code"):
            return int(e.get_http_status_code()), server_message(json.dumps(getattr(e, "json", {})))
    return None


def connection_lost(error: BaseException) -> str | None:
    """Why an MLflow request failed, where the cause is the connection (not the request): the
    server went away, or stopped answering. None for any other failure (an HTTP answer included:
    urllib3 reports retried error answers as a MaxRetryError too)."""
    if http_answer(error) is not None:
        return None
    for e in _chain(error):
        name = type(e).__name__
        if name in ("ConnectionError", "MaxRetryError", "NewConnectionError", "ConnectTimeoutError", "ReadTimeout", "ConnectTimeout"):
            text = str(e)
            if "Connection refused" in text:
                return "connection refused"
            if "timed out" in text.lower() or "Timeout" in name:
                return "no answer in time"
            return "connection lost"
        if isinstance(e, ConnectionError):
            return "connection lost"
    return None
