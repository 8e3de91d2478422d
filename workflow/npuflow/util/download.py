"""Downloads shared by model checkpoints (`url:` sources) and dataset archives: https only (plain
http only when allowed, redirects included), a fast reachability probe, the transfer checked
complete, sha256 verified, and the file written atomically: a failed or mismatching download
leaves no file behind."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from npuflow.util.errors import NpuflowError
from npuflow.util.io import atomic_path, sha256_file

PROBE_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 10.0
# A server trickling a byte now and then never trips the per-read timeout above. As curl's
# --speed-limit/--speed-time: a transfer slower than this over a whole window is broken off.
LOW_SPEED_BYTES_PER_S = 10 * 1024
LOW_SPEED_WINDOW_S = 60.0
# Above any checkpoint or image archive npuflow expects (ImageNet's validation tar is 6.4 GB); a
# server that streams without end is stopped here instead of filling the disk.
MAX_DOWNLOAD_BYTES = 16 * 2**30


class DownloadError(NpuflowError):
    """A download is refused or failed; the message names the URL and why."""


class DownloadUnavailable(DownloadError):
    """The file cannot be had now (host unreachable, transfer broken off): worth trying later."""


class ChecksumMismatch(DownloadError):
    """The downloaded file is not the one asked for (sha256 differs); it was discarded."""


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to the URL's host opens within `timeout` seconds.
    Hub clients retry for ~50 s when offline; this answers in at most `timeout`."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result = []

    def probe():
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo has no timeout of its own, so the probe runs in a thread we stop waiting for.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def check_scheme(url: str, allow_http: bool, what: str = "download") -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme != "https" and not (scheme == "http" and allow_http):
        raise DownloadError(f"refusing to {what} {url}: only https is allowed (allow_http permits http)")


class _SchemeCheckingRedirect(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects from https to http and ftp; a redirect must pass the same scheme
    check as the URL the user wrote."""

    def __init__(self, allow_http: bool):
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_scheme(newurl, self.allow_http, f"follow the redirect from {req.full_url} to")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url: str, dest: str | Path, sha256: str | None, allow_http: bool = False) -> str:
    """Download `url` to `dest` atomically; verify sha256 when given. Returns the file's sha256.
    A `dest` already holding the expected sha256 is kept (a cache); one that does not is removed."""
    dest = Path(dest)
    check_scheme(url, allow_http)
    expected = sha256.lower() if sha256 else None
    if dest.exists():
        if expected and sha256_file(dest) == expected:
            return expected
        dest.unlink()  # not the file asked for (or unverifiable): never leave it to be used
    if not reachable(url):
        raise DownloadUnavailable(f"{url} is unreachable (no connection within {PROBE_TIMEOUT_S:.0f} s)")
    opener = urllib.request.build_opener(_SchemeCheckingRedirect(allow_http))
    with atomic_path(dest) as tmp:
        try:
            with opener.open(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as out:
                _copy(url, resp, out)
                # http.client returns a short body without complaint when the connection drops
                # before Content-Length bytes arrived; `length` is what is still owed.
                if resp.length:
                    raise DownloadUnavailable(
                        f"download of {url} broke off: {out.tell()} bytes received, {out.tell() + resp.length} announced"
                    )
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise DownloadUnavailable(f"download of {url} failed: {type(e).__name__}: {e}") from e
        digest = sha256_file(tmp)
        if expected and digest != expected:
            raise ChecksumMismatch(f"sha256 mismatch for {url}: expected {expected}, got {digest}; file discarded")
    return digest


def _copy(url: str, resp, out) -> None:
    """Copy the response body to `out`, within MAX_DOWNLOAD_BYTES and above the low-speed limit."""
    if resp.length is not None and resp.length > MAX_DOWNLOAD_BYTES:
        raise DownloadError(f"refusing to download {url}: {resp.length} bytes announced, more than the {MAX_DOWNLOAD_BYTES} allowed")
    received = 0
    window_start, window_bytes = time.monotonic(), 0
    # read1 returns what one read of the socket gives, so a trickle is seen as it arrives.
    while chunk := resp.read1(1 << 20):
        received += len(chunk)
        if received > MAX_DOWNLOAD_BYTES:
            raise DownloadError(f"download of {url} stopped: more than the {MAX_DOWNLOAD_BYTES} bytes allowed")
        out.write(chunk)
        window_bytes += len(chunk)
        elapsed = time.monotonic() - window_start
        if elapsed >= LOW_SPEED_WINDOW_S:
            if window_bytes / elapsed < LOW_SPEED_BYTES_PER_S:
                raise DownloadUnavailable(
                    f"download of {url} too slow: {window_bytes} bytes in the last {elapsed:.0f} s,"
                    f" under {LOW_SPEED_BYTES_PER_S} bytes/s; {received} bytes received"
                )
            window_start, window_bytes = time.monotonic(), 0
