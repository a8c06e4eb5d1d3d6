"""Scheduled deployments: what `quanta serve` registers, what prefect.yaml declares, and that the two agree."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows import deployments as D
from flows.studies import STUDIES, available_studies
from schemas.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SP = "sparse-parity"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Tests see the default schedules, configs and store unless they set them."""
    import os

    for k in list(os.environ):
        if k.startswith(("QUANTA_SCHEDULE_", "QUANTA_CONFIG_")) or k == "QUANTA_STORE":
            monkeypatch.delenv(k)


def _cron(dep) -> str | None:
    (s,) = dep.schedules
    return getattr(s.schedule, "cron", None)


def test_one_deployment_per_available_study_with_default_schedule_and_demo_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    deps = D.deployments()
    assert [d.flow_name for d in deps] == available_studies()
    assert SP in available_studies()
    for dep in deps:
        study = dep.flow_name  # flow names are the study names
        config_cls, flow = STUDIES[study].load()
        assert dep.name == D.DEPLOYMENT_NAME == "scheduled"
        assert dep.entrypoint == f"{STUDIES[study].module}.{flow.fn.__name__}"
        assert _cron(dep) == D.DEFAULT_SCHEDULES[study]
        assert dep.schedules[0].schedule.timezone == "UTC"
        assert dep.tags == ["quanta", study, "scheduled"] and dep.description
        # parameters: the study's default TOML, validated, as JSON data (what the UI form edits); an absolute store
        assert set(dep.parameters) == {"config", "store"}
        expected = load_config(config_cls, ROOT / STUDIES[study].default_config)
        assert dep.parameters["config"] == expected.model_dump(mode="json")
        assert dep.parameters["store"] == str(tmp_path / "quanta-store")


def test_parameters_validate_against_the_flow_signature_and_the_ui_schema():
    from prefect.utilities.schema_tools import validate

    for dep in D.deployments():
        config_cls, flow = STUDIES[dep.flow_name].load()
        params = flow.validate_parameters(dict(dep.parameters))
        assert isinstance(params["config"], config_cls)  # the JSON dict comes back as the pydantic model
        assert params["config"] == config_cls.model_validate(dep.parameters["config"])
        schema = dep._parameter_openapi_schema.model_dump()
        assert "config" in schema["properties"] and schema["definitions"]  # the UI renders a form for the model
        validate(dep.parameters, schema, raise_on_error=True)


def test_env_overrides_schedule_config_and_store(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTA_SCHEDULE_SPARSE_PARITY", "*/15 * * * *")
    monkeypatch.setenv("QUANTA_SCHEDULE_TIMEZONE", "Europe/Paris")
    monkeypatch.setenv("QUANTA_CONFIG_SPARSE_PARITY", str(ROOT / "configs/sparse_parity/tiny.toml"))
    monkeypatch.setenv("QUANTA_STORE", str(tmp_path / "elsewhere"))
    (dep,) = D.deployments([SP])
    assert _cron(dep) == "*/15 * * * *" and dep.schedules[0].schedule.timezone == "Europe/Paris"
    assert dep.parameters["config"]["task"]["n_tasks"] == 8  # tiny.toml
    assert dep.parameters["store"] == str(tmp_path / "elsewhere")

    monkeypatch.setenv("QUANTA_SCHEDULE_SPARSE_PARITY", "3600")  # seconds: an interval
    (dep,) = D.deployments([SP])
    assert dep.schedules[0].schedule.interval.total_seconds() == 3600

    monkeypatch.setenv("QUANTA_SCHEDULE_SPARSE_PARITY", "off")  # deployed, runs only when triggered
    (dep,) = D.deployments([SP])
    assert not dep.schedules

    monkeypatch.setenv("QUANTA_SCHEDULE_SPARSE_PARITY", "every night")
    with pytest.raises(ValueError, match="QUANTA_SCHEDULE_SPARSE_PARITY"):
        D.deployments([SP])


def test_study_selection():
    assert [d.flow_name for d in D.deployments([SP])] == [SP]
    with pytest.raises(ValueError, match="unknown study 'nope'"):
        D.deployments(["nope"])


def test_serve_passes_the_deployments_to_prefect_serve(monkeypatch):
    import prefect
    from prefect.settings import PREFECT_API_URL, temporary_settings

    calls = []
    monkeypatch.setattr(prefect, "serve", lambda *deps, **kw: calls.append((deps, kw)))
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        D.serve([SP])
    (deps, kw), = calls
    assert [(d.flow_name, d.name) for d in deps] == [(SP, "scheduled")] and kw == {"limit": 1}

    # without a server (ephemeral API: no scheduler service) it refuses, saying what to do
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(SystemExit, match="PREFECT_API_URL"):
            D.serve([SP])
    assert len(calls) == 1


def test_cli_serve_calls_serve(monkeypatch):
    from flows.cli import main

    seen = []
    monkeypatch.setattr(D, "serve", lambda studies=None: seen.append(studies))
    assert main(["serve", "--study", SP]) == 0 and main(["serve"]) == 0
    assert seen == [[SP], None]


def test_deployment_applies_to_the_server_with_its_schedule(prefect_server, monkeypatch):
    """Registered as `serve` would register it; the server accepts a run with the deployment's parameters
    (it checks them against the flow's parameter schema)."""
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("QUANTA_CONFIG_SPARSE_PARITY", str(ROOT / "configs/sparse_parity/tiny.toml"))
    (dep,) = D.deployments([SP])
    dep_id = dep.apply()
    with get_client(sync_client=True) as client:
        try:
            got = client.read_deployment(dep_id)
            assert got.name == "scheduled" and set(got.tags) == {"quanta", SP, "scheduled"}
            assert [s.schedule.cron for s in got.schedules] == ["0 2 * * *"]
            assert got.parameters == dep.parameters and got.enforce_parameter_schema
            assert client.read_flow(got.flow_id).name == SP
            run = client.create_flow_run_from_deployment(dep_id)  # only scheduled: nothing serves it here
            assert run.parameters["config"] == dep.parameters["config"]
            assert {"quanta", SP, "scheduled"} <= set(run.tags)  # how the runs are found in the UI
            client.delete_flow_run(run.id)
        finally:
            client.delete_deployment(dep_id)


# ------------------------------------------------------------------------------------------- prefect.yaml
def _prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_prefect_yaml_is_a_valid_project_file_matching_the_served_deployments():
    from prefect.cli.deploy._models import PrefectYamlModel

    data = _prefect_yaml()
    model = PrefectYamlModel.model_validate(data)
    assert model.deployments, "no deployments declared"
    assert data == D.prefect_yaml_data(), ("prefect.yaml is out of date with flows/deployments.py or the demo "
                                           "configs: regenerate it with `python -m flows.deployments > prefect.yaml`")
    served = {d.flow_name: d for d in D.deployments()}
    for dep in data["deployments"]:
        study = dep["tags"][1]
        assert dep["name"] == served[study].name
        assert [s["cron"] for s in dep["schedules"]] == [_cron(served[study])]
        assert dep["tags"] == served[study].tags
        assert dep["work_pool"]["name"] == D.WORK_POOL


def test_prefect_yaml_entrypoints_are_the_study_flows_and_parameters_validate():
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    seen = set()
    for dep in _prefect_yaml()["deployments"]:
        path, func = dep["entrypoint"].rsplit(":", 1)
        assert (ROOT / path).is_file(), path
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{func}", use_placeholder_flow=False)
        assert isinstance(flow, Flow)
        study = flow.name
        config_cls, study_flow = STUDIES[study].load()
        assert flow.fn.__name__ == study_flow.fn.__name__ and dep["tags"][1] == study
        # the declared config is the study's default TOML as written; the flow fills in defaults
        params = study_flow.validate_parameters(dict(dep["parameters"]))
        assert params["config"] == load_config(config_cls, ROOT / STUDIES[study].default_config), (
            f"prefect.yaml's {study} config differs from {STUDIES[study].default_config}: regenerate it with "
            "`python -m flows.deployments > prefect.yaml`")
        seen.add(study)
    assert seen == set(available_studies())
