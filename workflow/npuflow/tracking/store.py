"""The MLflow tracking store and its experiment: the client, the store's creation (`init_store`, once
before any logging job), the UI's links, and MLflow's failures said in one line."""

from __future__ import annotations

from pathlib import Path

from npuflow.core.records import StoreReport
from npuflow.tracking.answers import connection_lost, http_answer
from npuflow.tracking.server import answered_text, bound_http_retries, check_store
from npuflow.tracking.uri import is_server, redacted
from npuflow.util.errors import NpuflowError

# MLflow's UI opens an experiment by its kind: without one it guesses, and opens an experiment
# that has no traces on its GenAI overview. npuflow's runs are model development.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI opens every experiment by the sidebar's workflow switch (GenAI by default, kept
# by the browser), whatever the experiment's kind; a link that names the model-training view
# opens on the runs.
UI_VIEW = "workflowType=machine_learning"


def experiment_url(ui: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_VIEW}"


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of one run."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"


def mlflow_client(uri: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    bound_http_retries()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _artifact_root(uri: str) -> str | None:
    """Artifacts of the embedded SQLite store live beside it (results/mlartifacts)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return None


def init_store(*, uri: str, experiment: str, out_json: str | Path) -> StoreReport:
    """Create (and migrate) the tracking store and the experiment, once; mark the experiment as
    model development (an experiment of an older npuflow gets the mark too). A store that is no
    server is checked first (a local one must be writable: MLflow would retry for minutes)."""
    if not is_server(uri):
        check_store(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = mlflow_client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = client.create_experiment(
                experiment, artifact_location=_artifact_root(uri), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        else:
            exp_id = exp.experiment_id
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as e:
        raise TrackingFailed(uri, f"the experiment {experiment!r} was looked up or created", e) from e
    report = StoreReport(tracking_uri=redacted(uri), experiment=experiment, experiment_id=exp_id)
    report.write(out_json)
    return report


class TrackingFailed(NpuflowError):
    """MLflow failed mid-way: one line saying where, what is kept and what to do."""

    def __init__(self, uri: str, doing: str, error: Exception, kept: str = ""):
        answer = http_answer(error) if is_server(uri) else None
        lost = connection_lost(error)
        if answer:
            why = answered_text(uri, *answer, doing)
        elif lost:
            why = f"the MLflow tracking server {redacted(uri)} stopped answering ({lost}) while {doing}"
        else:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            why = f"MLflow at {redacted(uri)} failed while {doing}: {type(error).__name__}: {lines[0][:300] if lines else ''}"
        # MLflow's and its drivers' messages may quote the URI: redacted whole.
        super().__init__(redacted(f"{why}; {kept}every stage output is kept, and the next snakemake run logs what is missing"))
