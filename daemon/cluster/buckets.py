"""The cluster's replicated KV buckets (the writer lease, the node registry), opened the same way by every node.

Several nodes start at once and the meta leader may be busy, so a request that times out is asked again
(creating a bucket with the same settings twice is no error). A bucket that exists with other settings (the
operator changed the lease TTL or the replica count) is brought to this node's settings instead of refusing
the node: the settings are the cluster's, and the last node started with them wins.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Final

import structlog
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import BadRequestError, ServiceUnavailableError

from daemon.cluster.bridge import AsyncioThread

log = structlog.get_logger(__name__)

OPEN_TRIES: Final = 6
STREAM_IN_USE: Final = 10058  # "stream name already in use with a different configuration"


async def open_kv(bridge: AsyncioThread, nc: Any, bucket: str, *, ttl_s: float, replicas: int) -> Any:
    """nats-py's KeyValue for ``bucket`` (one value per key, entries expiring ``ttl_s`` after their write)."""
    js = nc.jetstream()

    async def open_bucket() -> Any:
        for attempt in range(1, OPEN_TRIES + 1):
            try:
                return await js.create_key_value(bucket=bucket, history=1, ttl=ttl_s, replicas=replicas)
            except BadRequestError as e:
                if e.err_code != STREAM_IN_USE:
                    raise
                return await _adopt(js, bucket, ttl_s, replicas)
            except (NatsTimeoutError, ServiceUnavailableError, NoRespondersError):
                if attempt == OPEN_TRIES:
                    raise
                await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    return await bridge.run(open_bucket)


async def _adopt(js: Any, bucket: str, ttl_s: float, replicas: int) -> Any:
    stream = f"KV_{bucket}"
    config = (await js.stream_info(stream)).config
    log.info(
        "cluster_bucket_settings_changed",
        bucket=bucket,
        ttl_s=ttl_s,
        was_ttl_s=config.max_age,
        replicas=replicas,
        was_replicas=config.num_replicas,
    )
    await js.update_stream(dataclasses.replace(config, max_age=ttl_s, num_replicas=replicas))
    return await js.key_value(bucket)
