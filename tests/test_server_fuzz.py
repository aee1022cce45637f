"""Schema fuzzing: schemathesis sends requests generated from the server's own OpenAPI
description, valid ones and invalid ones, to every route of a real server (tiny model); not one
may get a 5xx. The number of examples per route is bounded (and derandomized) to keep CI
short; FUZZ_EXAMPLES raises it for a longer hunt."""
from __future__ import annotations

import os

import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from server_utils import MODEL_NAME, running_server

from octavo.server.state import ServerSettings

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))


@pytest.fixture(scope="module")
def fuzz_server():
    settings = ServerSettings(served_model_names=[MODEL_NAME], log_stats=False, log_requests=False)
    # A short context keeps each generated request cheap, whatever n and max_tokens it asks for.
    with running_server(settings, max_model_len=48, num_kv_blocks=64) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    schema.config.update(base_url=fuzz_server.url, request_timeout=120)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=MAX_EXAMPLES, deterministic=True, database="none")
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_no_server_errors(case, fuzz_server):
    case.call_and_validate(checks=[not_a_server_error])
    assert fuzz_server.engine.is_alive()
