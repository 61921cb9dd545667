"""OpenAPI as the API really answers: problem+json errors, Bearer auth, the limits' status codes.

FastAPI documents every 422 as its own ``HTTPValidationError`` JSON and knows nothing of our
auth header, rate limits or body limit; a schema-driven tester (``tests/integration/
test_schemathesis.py``) holds each response against this document, so it must be exact.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from zoserve.models.problems import Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_CONTENT = {"application/problem+json": {"schema": PROBLEM_REF}}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def install(app: FastAPI) -> None:
    """Post-process ``app.openapi()`` once (the result is cached by FastAPI)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        patch(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add(responses: dict[str, Any], code: str, description: str, **extra: Any) -> None:
    responses.setdefault(code, {"description": description, **extra})


def patch(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    if "Problem" not in schemas:
        schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer",
        "description": "An API key (tenant), the admin key (/v1/keys) or a rater link's token (its job's form only)."}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "Validation failed"}
            if path.startswith("/v1/"):
                op.setdefault("security", [{"bearer": []}])
                _add(responses, "401", "Missing, unknown or revoked key")
                _add(responses, "429", "Over the key's rate limit (or the tenant's jobs in flight)", headers=RETRY_AFTER)
                _add(responses, "503", "The job store (Redis) is unreachable; retry shortly", headers=RETRY_AFTER)
                if "{" in path:
                    _add(responses, "404", "No such resource (or another tenant's)")
                if "requestBody" in op:
                    _add(responses, "413", "Request body over the server's limit")
                    _add(responses, "422", "Validation failed")
            if path == "/readyz":
                _add(responses, "503", "Redis unreachable or no worker alive")
            for code, response in responses.items():
                if code[0] in "45":
                    response["content"] = PROBLEM_CONTENT
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _require_discriminators(schemas)


def _require_discriminators(schemas: dict[str, Any]) -> None:
    """A tag with a default (``kind: Literal["builtin"] = "builtin"``) is optional in pydantic's schema, but a
    discriminated union needs it in the input: mark it required in every member of the union."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            disc = node.get("discriminator")
            if isinstance(disc, dict):
                for ref in disc.get("mapping", {}).values():
                    member = schemas.get(ref.rsplit("/", 1)[-1], {})
                    required = member.setdefault("required", [])
                    if disc["propertyName"] not in required:
                        required.insert(0, disc["propertyName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schemas)
