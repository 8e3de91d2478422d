"""Logging to a tracking server that lets in only who belongs (issue 18), and one that goes away
mid-way through a logging job (issue 15): a real `mlflow server --app-name basic-auth` on
127.0.0.1, with its admin credentials in a temporary folder and a user for the pipeline; the tiny
pipeline's logging through a proxy that stops answering after the first run is logged."""

from __future__ import annotations

import http.client
import http.server
import json
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import background
from conftest import copy_pipeline, mlflow_server, postgres_store, snakemake_command, snakemake_env

ADMIN_PASSWORD = "admin-pw-for-tests-only"
PASSWORD = "pipeline-Pw-7d3f9a41c2"  # the pipeline user's; grepped for in every file a run wrote
READER_PASSWORD = "reader-pw-for-tests-only"


def api(url: str, endpoint: str, body: dict | None = None, auth: tuple[str, str] | None = None, method: str | None = None):
    """(status, JSON or text) of one REST call."""
    import base64

    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class DyingProxy:
    """A reverse proxy to the MLflow server that stops answering (closes its port: connection
    refused) right after it forwarded the first alias update, the last request of a run's
    logging: the server gone between two runs of one logging job. `die=False`: it never does."""

    def __init__(self, upstream: str, port: int = 0, die: bool = True):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.died_at = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "content-length")}
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")  # every request on a new connection: none outlives the death
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True
                conn.close()
                if die and proxy.died_at is None and self.path.endswith("/registered-models/alias"):
                    proxy.died_at = time.time()
                    threading.Thread(target=proxy.stop).start()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def run(workdir: Path, uri: str, user: str | None = None, password: str | None = None) -> subprocess.CompletedProcess:
    env = {**snakemake_env(), "MLFLOW_TRACKING_URI": uri}
    if user:
        env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
    return subprocess.run(snakemake_command(workdir), capture_output=True, text=True, cwd=workdir, env=env)


@background.fixture(scope="module")
def authenticated(pipeline, tmp_path_factory):
    """The tiny pipeline's working folder logged to a basic-auth server through the proxy: with a
    wrong password, with none, then with the right one while the proxy dies after the first run,
    then once more with the server back (the proxy on the same port)."""
    server_dir = tmp_path_factory.mktemp("auth-server")
    (server_dir / "auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{server_dir}/auth.db\n"
        "admin_username = admin\n"
        f"admin_password = {ADMIN_PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    workdir = copy_pipeline(pipeline, tmp_path_factory.mktemp("auth") / "pipeline")
    # The team recipe's backend store (docs/scaling-out.md): PostgreSQL, from .ci/postgres (CI
    # starts it; root starts it here); SQLite where neither can.
    store = postgres_store("npuflow_auth", server_dir)
    with mlflow_server(server_dir, auth_config=server_dir / "auth.ini", store=store) as url:
        admin = ("admin", ADMIN_PASSWORD)
        for user, password in (("pipeline", PASSWORD), ("reader", READER_PASSWORD)):
            assert api(url, "users/create", {"username": user, "password": password}, admin)[0] == 200
        proxy = DyingProxy(url)
        logs = workdir / "results" / "logs"
        before = {p: p.stat().st_mtime for p in logs.rglob("*.log")}
        steps = {"wrong": run(workdir, proxy.url, "pipeline", "not-the-password"), "none": run(workdir, proxy.url)}
        steps["logs_untouched"] = all(p.stat().st_mtime == t for p, t in before.items()) and set(logs.rglob("*.log")) == set(before)
        steps["report_before"] = (workdir / "results" / "report.html").read_bytes()
        steps["died"] = run(workdir, proxy.url, "pipeline", PASSWORD)
        steps["report_after_died"] = (workdir / "results" / "report.html").read_bytes()
        steps["died_at"] = proxy.died_at
        steps["track_log_at"] = (logs / "track" / "efficientvit_m0.log").stat().st_mtime
        proxy = DyingProxy(url, port=int(proxy.url.rsplit(":", 1)[1]), die=False)
        steps["back"] = run(workdir, proxy.url, "pipeline", PASSWORD)
        exp = api(url, "experiments/get-by-name?experiment_name=npuflow-tiny", auth=admin)[1]["experiment"]
        steps["runs"] = api(url, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100}, admin)[1]["runs"]
        steps["reader_search"] = api(url, "runs/search", {"experiment_ids": [exp["experiment_id"]]}, ("reader", READER_PASSWORD))[0]
        steps["reader_alias"] = api(
            url,
            "registered-models/alias",
            {"name": "efficientvit_m0-rdk-x5", "alias": "current", "version": "1"},
            ("reader", READER_PASSWORD),
        )[0]
        steps["anonymous"] = api(url, "runs/search", {"experiment_ids": [exp["experiment_id"]]})[0]
        proxy.stop()
        steps["store"] = store
        steps["store_dump"] = store.dump() if store else (server_dir / "server.db").read_bytes()
    return workdir, server_dir, steps


def test_wrong_or_missing_credentials_stop_the_run_before_any_job_in_one_line(authenticated):
    _, _, steps = authenticated
    for name, expected in (
        ("wrong", "refused the login of user 'pipeline' (MLFLOW_TRACKING_USERNAME) (401 Unauthorized): wrong user name or password"),
        ("none", "asks for a login (401 Unauthorized) and none is set: export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ):
        proc = steps[name]
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and expected in out, out[-2000:]
        assert "rule init_mlflow:" not in out and "rule track:" not in out and "not-the-password" not in out
    assert steps["logs_untouched"]  # no job ran: no log written


def test_a_server_gone_mid_way_fails_the_logging_job_in_one_line_and_keeps_the_rest(authenticated):
    workdir, _, steps = authenticated
    proc = steps["died"]
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "stopped answering (connection refused) while efficientvit_m0@rdk-x5 was logged; the runs of efficientvit_m0@ax650n-npu3 are logged"
        in out
    )
    assert steps["died_at"] is not None and steps["track_log_at"] - steps["died_at"] < 30  # MLflow's retries, bounded
    # Every stage output is still there (the failed logging job's own record is removed, as Snakemake does).
    model = workdir / "results" / "efficientvit_m0"
    for path in ("model.onnx", "quant/int8.onnx", "eval/int8.json", "build/rdk-x5/build.json", "plots/latency.png"):
        assert (model / path).is_file(), path
    # The earlier complete report is kept as it was (issue 28), beside the partial one.
    assert "(results/report.html, of an earlier complete run, is kept until a run finishes)" in out
    assert "what exists is in results/report.partial.html" in out and steps["report_after_died"] == steps["report_before"]
    assert not list((workdir / "results").rglob("*.part"))  # no half-written file


def test_the_run_after_the_server_is_back_logs_exactly_the_missing_runs(authenticated):
    workdir, _, steps = authenticated
    back = steps["back"]
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-3000:]
    runs = [
        {t["key"]: t["value"] for t in r["data"]["tags"]} | {"status": r["info"]["status"], "id": r["info"]["run_id"]}
        for r in steps["runs"]
    ]
    assert sorted((r["target"], r["status"], r["npuflow.current"]) for r in runs) == [
        ("ax650n-npu3", "FINISHED", "true"),
        ("rdk-x5", "FINISHED", "true"),
    ]  # one run per pair: the one logged before the server went, reused, and the missing one
    track = json.loads((workdir / "results" / "efficientvit_m0" / "track.json").read_text())["runs"]
    assert track["ax650n-npu3"]["reused"] and not track["rdk-x5"]["reused"]
    assert {r["id"] for r in runs} == {track[t]["run_id"] for t in track}
    assert "(Rule: report)" in back.stdout + back.stderr  # the report kept by the failed run, made again
    assert not (workdir / "results" / "report.partial.html").exists()


def test_the_permissions_let_colleagues_read_but_not_move_the_pipelines_model_alias(authenticated):
    _, _, steps = authenticated
    assert steps["reader_search"] == 200 and steps["reader_alias"] == 403 and steps["anonymous"] == 401


def test_the_password_is_in_no_file_the_runs_wrote(authenticated):
    """Logs, reports, the MLflow store (the server's database, artifacts and user store) and
    Snakemake's metadata and logs; and the terminal."""
    workdir, server_dir, steps = authenticated
    secret = PASSWORD.encode()
    files = [p for root in (workdir, server_dir) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 50 and any(".snakemake" in p.parts for p in files) and b"npuflow-tiny" in steps["store_dump"]
    assert [p for p in files if secret in p.read_bytes()] == [] and secret not in steps["store_dump"]
    for proc in (steps["wrong"], steps["none"], steps["died"], steps["back"]):
        assert PASSWORD not in proc.stdout + proc.stderr


def test_the_team_recipe_keeps_its_runs_in_postgresql_and_its_database_password_out_of_every_file(authenticated):
    """docs/scaling-out.md's shared server: basic auth in front of a PostgreSQL backend store whose
    password the server reads from a ~/.pgpass-style file. The pipeline's runs land in the
    database, and the database password is in no file of the run's folder, the server's folder but
    that file, nor the terminal."""
    workdir, server_dir, steps = authenticated
    store = steps["store"]
    if store is None:
        pytest.skip("no PostgreSQL here: as root, `.ci/postgres install && .ci/postgres up` (CI does)")
    dump = steps["store_dump"]
    run_ids = {r["info"]["run_id"] for r in steps["runs"]}
    assert run_ids and all(run_id.encode() in dump for run_id in run_ids)
    secret = store.password.encode()
    files = [p for root in (workdir, server_dir) for p in root.rglob("*") if p.is_file() and p != store.passfile]
    assert [p for p in files if secret in p.read_bytes()] == []
    for proc in (steps["wrong"], steps["none"], steps["died"], steps["back"]):
        assert store.password not in proc.stdout + proc.stderr


def test_a_tracking_uri_with_credentials_is_refused_without_showing_them(tmp_path):
    env = {**snakemake_env(), "MLFLOW_TRACKING_URI": f"https://pipeline:{PASSWORD}@mlflow.example.org"}
    proc = subprocess.run(snakemake_command(tmp_path, "-n"), capture_output=True, text=True, cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "MLFLOW_TRACKING_URI: the tracking URI https://***@mlflow.example.org has credentials in it" in out
    assert PASSWORD not in out and not (tmp_path / "results").exists()
