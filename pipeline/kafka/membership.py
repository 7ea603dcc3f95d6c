"""Static group membership (KIP-345) for workers with local state: a restarted worker rejoins
as the member it replaces.

Why: after a crash the group keeps the dead member until its session times out, and a
worker that comes back as a new member waits that long before it gets any partition. With a
`group.instance.id` that stays the same across restarts on a host (`instance_id`), the
coordinator hands the returning worker its old member's partitions at once - the ones whose
local stores it has.

The catch: a static member does not leave the group when it closes, so a worker stopped on
purpose would hold its partitions until the session timed out. `leave` sends the
LeaveGroup request (version 3, which names the instance) that aiokafka does not send for
static members; aiokafka defines versions 0 and 1 only, hence the structs below.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

log = logging.getLogger(__name__)


def instance_id(name: str, slot: int) -> str:
    """Stable across restarts of one worker (host, worker name, state slot), distinct
    between the workers of a host."""
    return f"cdrpipe-{socket.gethostname()}-{name}-{slot}"


class LeaveGroupResponse_v3(Response):  # noqa: N801 - Kafka's protocol names
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class LeaveGroupRequest_v3(RequestStruct):  # noqa: N801
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class LeaveAsStaticMember(Request[LeaveGroupRequest_v3]):
    API_KEY = 13

    def __init__(self, group: str, member_id: str, instance: str) -> None:
        self.group, self.member_id, self.instance = group, member_id, instance

    def build(self, request_struct_class: type[LeaveGroupRequest_v3]) -> LeaveGroupRequest_v3:
        return request_struct_class(self.group, [(self.member_id, self.instance)])


async def leave(consumer: Any, group: str, instance: str) -> bool:
    """Leave the group as the static member `instance` (before `consumer.stop()`), so that
    the others take over its partitions at once; False if the coordinator did not answer
    (the partitions then move when the session times out)."""
    coordinator = consumer._coordinator  # noqa: SLF001 - aiokafka has no public call
    try:
        response = await coordinator._send_req(  # noqa: SLF001
            LeaveAsStaticMember(group, coordinator.member_id, instance)
        )
    except Exception as exc:
        log.warning("leaving the group as %s failed: %r", instance, exc)
        return False
    errors = [response.error_code] + [m[2] for m in response.members]
    if any(errors):
        log.warning("leaving the group as %s: error codes %s", instance, errors)
        return False
    return True
