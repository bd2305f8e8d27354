"""The OpenAPI document is made from the models (WO-OBS-3): both committed copies are what the generator writes."""

from __future__ import annotations

import json

from worker_orcd.api import openapi
from worker_orcd.api.health import Health, HealthSummary


def test_committed_copies_are_the_generated_document():
    text = openapi.render()
    assert openapi.PACKAGED.read_text() == text, "python -m worker_orcd.api.openapi --write"
    assert openapi.SPEC.read_text() == text, "python -m worker_orcd.api.openapi --write"


def test_every_model_slot_is_filled():
    document = json.loads(openapi.render())
    assert "<worker_orcd." not in json.dumps(document)
    schemas = document["components"]["schemas"]
    for name in ("ExecuteRequest", "CancelRequest", "OpenAIChatRequest", "OpenAICompletionRequest", "Health", "JobId"):
        assert isinstance(schemas[name], dict) and "title" not in schemas[name]
    limit = document["paths"]["/jobs"]["get"]["parameters"][1]
    assert limit["name"] == "limit" and limit["schema"] == {
        "default": 50,
        "maximum": 1000,
        "minimum": 1,
        "type": "integer",
    }


def test_health_models_forbid_what_they_do_not_declare():
    assert HealthSummary.model_validate({"status": "healthy", "ready": True}).ready
    assert set(Health.model_fields) >= {"status", "ready", "busy", "active_job", "engine", "threads"}
