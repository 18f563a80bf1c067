"""The REST admin API of a real ``kvtier serve``, fuzzed from its own OpenAPI document
(schemathesis strategies, seeded): no request, valid or not, gets a 5xx or hangs.
Mutations are sent with the admin token, so they run rather than stop at 401.

schemathesis's pytest plugin does not run under pytest 9, so each operation's strategy
is driven by hypothesis's ``@given`` here instead.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis.checks import not_a_server_error

EXAMPLES = 20  # per operation


def fuzz(operation, seen: list[int]) -> None:
    @seed(8)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case) -> None:
        response = case.call(headers={"Authorization": "Bearer secret"}, timeout=5)
        seen.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    run()


def test_no_request_gets_a_5xx_or_hangs(module_server):
    schema = schemathesis.openapi.from_url(module_server.rest_url + "/openapi.json")
    seen: list[int] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        fuzz(operation, seen)
    assert len(operations) >= 12 and not [s for s in seen if s >= 500]
    print(f"REST fuzz: {len(seen)} requests over {len(operations)} operations, "
          f"statuses {sorted(set(seen))}, 0 of them 5xx")
