"""The Redis side of one family: Rasa's tracker and lock, Jisr's keys, and queued send jobs.

Three Redis databases hold it (see jisr.gateway.app.start_services): Jisr's keys and the
arq send queues in the URL's database, Rasa's trackers in db 1, Rasa's locks in db 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import redis.asyncio as aioredis

from jisr import keys
from jisr.outbox import BULK_QUEUE, REPLIES_QUEUE, rewrite_batch
from jisr.redisconn import RedisHandle

# arq's key prefixes (arq/constants.py): a job's body, its in-progress lock, retry count and
# result (which keeps the job's arguments, address and text included, for keep_result seconds).
ARQ_JOB_PREFIXES = ("arq:job:", "arq:in-progress:", "arq:retry:", "arq:result:")
QUEUES = (REPLIES_QUEUE, BULK_QUEUE)


@dataclass
class ConversationRedis:
    """Clients on the three databases."""

    jisr: aioredis.Redis
    trackers: aioredis.Redis
    locks: aioredis.Redis

    @classmethod
    def from_handle(cls, handle: RedisHandle) -> "ConversationRedis":
        def client(db: int) -> aioredis.Redis:
            return aioredis.Redis(host=handle.host, port=handle.port, db=db, password=handle.password)

        return cls(jisr=client(handle.db), trackers=client(keys.RASA_TRACKER_DB), locks=client(keys.RASA_LOCK_DB))

    async def close(self) -> None:
        for client in (self.jisr, self.trackers, self.locks):
            await client.close()

    async def tracker(self, address: str) -> Optional[dict[str, Any]]:
        """The conversation as Rasa stored it (events with texts, slots), or None."""
        raw = await self.trackers.get(keys.rasa_tracker(address))
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {"unreadable": True, "bytes": len(raw)}

    async def reply_jobs_to(self, address: str) -> set[str]:
        """Ids of the jobs on the replies queue whose payload sends to ``address``.

        Jobs are otherwise found by id from the SQL log (erasure.py); this catches a reply
        queued without a readable log row. The bulk queue is not scanned (it may hold a
        million jobs): every campaign send has its row, so its id is known.
        """
        from arq.jobs import deserialize_job

        found: set[str] = set()
        for raw_id in await self.jisr.zrange(REPLIES_QUEUE, 0, -1):
            job_id = raw_id.decode()
            body = await self.jisr.get("arq:job:" + job_id)
            if body is None:
                continue
            try:
                payload = deserialize_job(body).args[0]
            except Exception:  # not one of ours: leave it
                continue
            if isinstance(payload, dict) and payload.get("address") == address:
                found.add(job_id)
        return found

    async def remove_jobs(self, job_ids: Iterable[str]) -> int:
        """Take jobs out of both queues and drop their bodies and results: a worker that picks
        the id up finds no body and drops it (arq: "job expired")."""
        removed = 0
        for job_id in job_ids:
            async with self.jisr.pipeline(transaction=True) as pipe:
                for queue in QUEUES:
                    pipe.zrem(queue, job_id)
                pipe.delete(*(prefix + job_id for prefix in ARQ_JOB_PREFIXES))
                results = await pipe.execute()
            removed += int(any(results))
        return removed

    async def remove_from_batches(self, sends_by_run: dict[int, list[str]]) -> int:
        """Take these campaign sends (run id → idempotency keys) out of their runs' queued batch
        jobs (jisr.outbox.send_batch; found through each run's registry, keys.campaign_batches).
        A batch left empty is removed; the others are rewritten in place, keeping their expiry.
        Returns the sends taken out."""
        from arq.jobs import deserialize_job

        removed = 0
        for run_id, send_keys in sends_by_run.items():
            wanted = set(send_keys)
            registry = keys.campaign_batches(run_id)
            for raw_id in await self.jisr.hkeys(registry):
                job_id = raw_id.decode()
                body = await self.jisr.get("arq:job:" + job_id)
                if body is None:
                    continue
                job = deserialize_job(body)
                payloads = job.args[0]
                kept = [p for p in payloads if p.get("idempotency_key") not in wanted]
                if len(kept) == len(payloads):
                    continue
                removed += len(payloads) - len(kept)
                if not kept:
                    await self.remove_jobs([job_id])
                    await self.jisr.hdel(registry, job_id)
                    continue
                await rewrite_batch(self.jisr, job_id, kept, job.enqueue_time.timestamp(), job.job_try)
        return removed

    async def scan_delete(self, client: aioredis.Redis, pattern: str) -> int:
        deleted = 0
        async for key in client.scan_iter(match=pattern, count=500):
            deleted += int(await client.delete(key))
        return deleted
