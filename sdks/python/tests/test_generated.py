"""Goal: the SDK can never silently fall behind the API.

Method: regenerate the models from docs/api/openapi.json and the sync client
from the async one and compare with the committed files; show that the check
fails when the document gains a field or an error code; check that every
route of the document has a method on both clients and every error code its
exception class."""

from __future__ import annotations

import copy
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import baton
from baton import errors, models

SDK = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SDK / "tools"))

import gen_models  # noqa: E402
import gen_sync  # noqa: E402

OPENAPI = gen_models.DEFAULT_OPENAPI


def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(OPENAPI.read_text())
    return doc


def test_models_are_fresh() -> None:
    assert gen_models.main(["--check"]) == 0, "run python sdks/python/tools/gen_models.py"


def test_sync_client_is_fresh() -> None:
    assert gen_sync.main(["--check"]) == 0, "run python sdks/python/tools/gen_sync.py"


@pytest.mark.parametrize(
    "change",
    [
        "a new optional field",
        "a new required field",
        "a field made nullable",
        "a new enum value",
    ],
)
def test_the_check_fails_when_the_schema_changes(tmp_path: Path, change: str) -> None:
    doc = document()
    changed = copy.deepcopy(doc)
    schemas = changed["components"]["schemas"]
    if change == "a new optional field":
        schemas["Task"]["properties"]["colour"] = {"type": "string"}
    elif change == "a new required field":
        schemas["Lease"]["properties"]["shard"] = {"type": "integer"}
        schemas["Lease"]["required"].append("shard")
    elif change == "a field made nullable":
        schemas["Handoff"]["properties"]["from_agent"] = {"type": ["string", "null"]}
    else:
        schemas["TaskStateName"]["enum"].append("paused")
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(changed))
    assert gen_models.main(["--openapi", str(path), "--check"]) == 1
    # The unchanged document still passes through the same path.
    path.write_text(json.dumps(doc))
    assert gen_models.main(["--openapi", str(path), "--check"]) == 0


def test_every_schema_has_a_model() -> None:
    for name, schema in document()["components"]["schemas"].items():
        assert hasattr(models, name), name
        if schema.get("type") == "object":
            model = getattr(models, name)
            wire = {f.alias or n for n, f in model.model_fields.items()}
            assert wire == set(schema.get("properties", {})), name
            required = {f.alias or n for n, f in model.model_fields.items() if f.is_required()}
            nullable = {
                p
                for p, s in schema.get("properties", {}).items()
                if "null" in (s.get("type") if isinstance(s.get("type"), list) else [])
                or any(o.get("type") == "null" for o in s.get("oneOf", []))
            }
            assert required == set(schema.get("required", [])) - nullable, name


def test_every_route_has_a_method_on_both_clients() -> None:
    operations = {
        op["operationId"]
        for item in document()["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    }
    assert operations == set(baton.OPERATIONS), "add the route to OPERATIONS and both clients"
    for method in baton.OPERATIONS.values():
        sync = getattr(baton.Client, method)
        asynchronous = getattr(baton.AsyncClient, method)
        assert not inspect.iscoroutinefunction(sync), method
        assert inspect.iscoroutinefunction(asynchronous), method
        assert inspect.signature(sync) == inspect.signature(asynchronous), method


def test_every_error_code_has_its_exception() -> None:
    codes = document()["components"]["schemas"]["ErrorCode"]["enum"]
    assert set(codes) == set(errors.ERRORS_BY_CODE), "add an exception class per new code"
    assert set(codes) == set(models.ERROR_CODE_VALUES)
