"""Secrets never leave the environment (issue 28): credentials in a tracking URI of any scheme are
hidden in what npuflow prints and stores, and the workflow hands the real URI to its jobs through
the environment, never as a rule param or argument (which Snakemake writes to .snakemake/)."""

import os
import stat
import sys

import pytest
import yaml

from conftest import REPO, snakemake, snakemake_env
from npuflow.tracking.store import TrackingFailed
from npuflow.tracking.uri import redacted, tracking_uri
from npuflow.util.errors import ConfigError

SECRET = "Pw-7f3a9c1e"


@pytest.mark.parametrize(
    "uri, shown",
    [
        (f"postgresql://pipeline:{SECRET}@db.example.org:5432/mlflow", "postgresql://***@db.example.org:5432/mlflow"),
        (f"postgresql+psycopg2://pipeline:{SECRET}@db/mlflow", "postgresql+psycopg2://***@db/mlflow"),
        (f"mysql://root:{SECRET}@127.0.0.1/mlflow", "mysql://***@127.0.0.1/mlflow"),
        (f"mysql+pymysql://root:{SECRET}@db:3306/mlflow?charset=utf8mb4", "mysql+pymysql://***@db:3306/mlflow?charset=utf8mb4"),
        (f"mssql+pyodbc://sa:{SECRET}@srv/mlflow?driver=ODBC+Driver+18", "mssql+pyodbc://***@srv/mlflow?driver=ODBC+Driver+18"),
        (f"https://pipeline:{SECRET}@mlflow.example.org", "https://***@mlflow.example.org"),
        (f"http://{SECRET}@127.0.0.1:5000/", "http://***@127.0.0.1:5000/"),  # a token as the user
        (f"s3://AKIAEXAMPLE:{SECRET}@bucket/artifacts", "s3://***@bucket/artifacts"),
        # A password holding '@', '/' or ':' (unencoded): hidden whole, up to the host.
        (f"postgresql://u:{SECRET}@x/y:z@db/mlflow", "postgresql://***@db/mlflow"),
        (f"postgresql://u:a@{SECRET}@db/mlflow", "postgresql://***@db/mlflow"),
        (f"postgresql://db/mlflow?user=u&password={SECRET}", "postgresql://db/mlflow?user=u&password=***"),
        (
            f"https://bucket.s3.amazonaws.com/a?X-Amz-Signature={SECRET}&X-Amz-Expires=60",
            "https://bucket.s3.amazonaws.com/a?X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        # Nothing to hide: unchanged.
        ("sqlite:///results/mlflow.db", "sqlite:///results/mlflow.db"),
        ("sqlite:////abs/path/with@at/mlflow.db", "sqlite:////abs/path/with@at/mlflow.db"),
        ("file:///home/me/mlruns", "file:///home/me/mlruns"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("databricks", "databricks"),
        # URIs inside a message, as MLflow's or a driver's errors quote them.
        (
            f"could not connect to postgresql://u:{SECRET}@db/m (timeout); also tried http://a:{SECRET}@b/ at 10:00, mail x@y",
            "could not connect to postgresql://***@db/m (timeout); also tried http://***@b/ at 10:00, mail x@y",
        ),
    ],
)
def test_credentials_are_hidden_in_any_scheme(uri, shown):
    assert redacted(uri) == shown
    assert SECRET not in redacted(uri)
    assert redacted(shown) == shown


def test_a_database_uri_may_hold_a_password_and_the_job_reads_it_from_the_environment(monkeypatch):
    real = f"postgresql://pipeline:{SECRET}@db/mlflow"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(real) == real  # as the Snakefile reads it from the config
    monkeypatch.setenv("MLFLOW_TRACKING_URI", real)
    assert tracking_uri(redacted(real), "--tracking-uri") == real  # as a job gets it
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ConfigError) as e:
        tracking_uri(redacted(real), "--tracking-uri")
    assert str(e.value) == (
        "--tracking-uri: the tracking URI postgresql://***@db/mlflow has its credentials hidden, and MLFLOW_TRACKING_URI, "
        "which holds the real one for the workflow's jobs, is not set"
    )


def test_an_mlflow_failure_quoting_the_uri_is_shown_without_its_password():
    error = RuntimeError(f"(psycopg2.OperationalError) could not connect to postgresql://pipeline:{SECRET}@db/mlflow")
    message = str(TrackingFailed(f"postgresql://pipeline:{SECRET}@db/mlflow", "the experiment was looked up", error))
    assert SECRET not in message and "postgresql://***@db/mlflow" in message


def stub_npuflow(folder):
    """An `npuflow` on the PATH that records how init-mlflow was called (its --tracking-uri, and
    whether MLFLOW_TRACKING_URI held the real URI) and writes the job's output: Snakemake's side of
    the job without MLflow or a database."""
    folder.mkdir()
    script = folder / "npuflow"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "args = sys.argv[1:]\n"
        "out = args[args.index('--out') + 1]\n"
        "os.makedirs(os.path.dirname(out), exist_ok=True)\n"
        "seen = {'tracking_uri_arg': args[args.index('--tracking-uri') + 1],\n"
        "        'env_is_the_real_uri': os.environ.get('MLFLOW_TRACKING_URI') == os.environ['EXPECTED_URI']}\n"
        "json.dump(seen, open(out, 'w'))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def test_a_password_in_a_database_uri_is_in_no_file_snakemake_writes_nor_in_the_terminal(tmp_path):
    """The issue's case: postgresql://user:secret@host/db was printed three times and stored in
    .snakemake/metadata and .snakemake/log. A dry run of the pipeline, then the init_mlflow job
    run for real (against a stub `npuflow`): the secret is nowhere, and the job got the URI. The
    database server is a socket that listens (the pre-flight asks no more of a database)."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    host = f"127.0.0.1:{listener.getsockname()[1]}"
    real = f"postgresql://pipeline:{SECRET}@{host}/mlflow"
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["mlflow"]["tracking_uri"] = real
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    work.mkdir()

    dry = snakemake(work, "-n", "-p", configfile=tmp_path / "c.yaml")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert f"npuflow init-mlflow --tracking-uri 'postgresql://***@{host}/mlflow'" in dry.stdout
    assert "npuflow track " in dry.stdout and SECRET not in dry.stdout + dry.stderr

    # The stub ahead of the venv's npuflow; EXPECTED_URI lets it compare without writing the URI.
    stubs = stub_npuflow(tmp_path / "bin")
    env = snakemake_env()
    # its own environment for this run only: patching conftest.snakemake_env put the stub on the
    # PATH of the pipeline runs computed meanwhile in the background (a Ctrl-C test failed so)
    env = {**env, "PATH": f"{stubs}{os.pathsep}{env['PATH']}", "EXPECTED_URI": real}
    with listener:
        run = snakemake(work, "-p", "results/mlflow.init.json", configfile=tmp_path / "c.yaml", env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert yaml.safe_load((work / "results" / "mlflow.init.json").read_text()) == {
        "tracking_uri_arg": f"postgresql://***@{host}/mlflow",
        "env_is_the_real_uri": True,
    }
    files = [p for p in work.rglob("*") if p.is_file()]
    assert any("metadata" in p.parts for p in files) and any(p.parent.name == "log" for p in files)
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []
    assert SECRET not in run.stdout + run.stderr


def test_a_url_with_credentials_in_a_model_or_dataset_is_refused_before_any_job_without_showing_them(tmp_path):
    """A dataset's or a model's URL travels to its jobs as a rule parameter (Snakemake's metadata and
    logs, then MLflow): one holding credentials (a user and password, a token, a pre-signed URL's
    signature) is refused by the dry run, naming the field, the secret shown nowhere."""
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["datasets"] = {
        **config.get("datasets", {}),
        "web": {"url": f"https://alice:{SECRET}@data.example.org/calib.tar.gz", "sha256": "0" * 64},
    }
    model = next(iter(config["models"]))
    config["models"]["fromurl"] = {
        **config["models"][model],
        "source": f"url:https://models.example.org/m.pt?X-Amz-Signature={SECRET}",
        "sha256": "0" * 64,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    work.mkdir()
    dry = snakemake(work, "-n", configfile=tmp_path / "c.yaml")
    out = dry.stdout + dry.stderr
    assert dry.returncode != 0
    assert "datasets.web.url: https://***@data.example.org/calib.tar.gz has credentials in it" in out
    assert "models.fromurl.source: url:https://models.example.org/m.pt?X-Amz-Signature=*** has credentials in it" in out
    assert SECRET not in out and not (work / "results").exists()
    assert [p for p in work.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()] == []
