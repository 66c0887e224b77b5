"""The RQ worker classes ``batcher worker`` runs: RQ's, with its per-job bookkeeping trimmed.

RQ's worker loop sends a plain heartbeat (HSET last_heartbeat, EXPIRE the worker key, EXPIRE
its executions key: three round trips) before each dequeue, after it, and after each job.
For jobs of a few milliseconds that is 9 of a job's ~28 round trips. ``LeanHeartbeats`` sends
the three commands in one round trip, at most once a second; a heartbeat RQ gives its own
TTL or pipeline goes out unchanged.

Why skipping is safe: a plain heartbeat sets the key's TTL to ``worker_ttl + 60`` (480 s),
and RQ blocks in a dequeue for at most ``worker_ttl - 15`` (405 s). The heartbeat after a
job always goes out, because the job's own heartbeats (in a forked horse, invisible here) may
have shortened the TTL. So before every dequeue, the last heartbeat is at most a second old
and has set the full TTL.

The suspension flag (``rq suspend``) is read at most once a second too, as RQ itself polls it
while suspended; ``BatchSimpleWorker`` also skips rewriting the state it last wrote (jobs run
in its own process, so nothing else changes it) and sends the IDLE that ends a job with the
heartbeat that follows it.

A batch job (``_plain_batch_job``) also skips RQ's job heartbeat before the success commit
and the WATCH and read of its dependents. ``BatchSimpleWorker`` sends its execution record
with its start and the batch's claim in one MULTI/EXEC, and the heartbeat and IDLE that
follow the job in its commit: 12.5 round trips a batch become 5 (dequeue, job read, start,
ack, commit).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import structlog
from rq import SimpleWorker, Worker, worker_registration
from rq.executions import Execution
from rq.job import JobStatus
from rq.utils import now
from rq.worker import WorkerStatus

from batcher import processing
from batcher.rq import guard
from batcher.rq.job import BatchJob, batch_args

log = structlog.stdlib.get_logger(__name__)

PLAIN_HEARTBEAT_EVERY_SECONDS = 1.0
SUSPENSION_CHECK_EVERY_SECONDS = 1.0
# how often a worker serving a pattern looks for new queues that match it (as the
# coordinator does, batcher.multi_queue)
RESCAN_SECONDS = 10.0


class LeanHeartbeats:
    """Mixin for an RQ worker class; see the module docstring."""

    _plain_heartbeat_due = 0.0
    _suspension_check_due = 0.0
    _deferred_state: str | None = None  # written by the next plain heartbeat
    allowed_functions = guard.ALLOWED_FUNCTIONS  # any other job is refused (guard.py)
    # the job ran in this process: its commit can carry the heartbeat that follows a job
    _heartbeat_in_commit = False
    _heartbeat_sent_with_commit = False
    # RQ registers a worker once, at its start: after RQ's Redis was lost and replaced by an
    # empty one (it has a server of its own, BATCH_RQ_REDIS_URL) the worker would take jobs
    # unlisted, and stats would show no worker. So its heartbeats also ask whether RQ still
    # lists it (same round trip), and it registers again when not. Off on one server: a lost
    # Redis is the batcher's too, and those round trips stay as they are
    check_registration = False
    # a worker given a pattern ('feeds-*'): the RQ queue names it should serve now, asked
    # every ``rescan_seconds``; new ones are added to the worker as it runs
    queue_finder: Callable[[], list[str]] | None = None
    rescan_seconds = RESCAN_SECONDS
    _rescan_due = 0.0
    connection: Any
    name: str
    key: str

    if TYPE_CHECKING:
        # what the mixin uses of the RQ worker class it is mixed into (RQ 3.0's BaseWorker);
        # declared for mypy only, so at run time every name resolves to RQ's own
        worker_ttl: int
        queue_class: Any
        job_class: Any
        serializer: Any
        queues: list[Any]
        _ordered_queues: list[Any]

        def queue_names(self) -> list[str]: ...

        def serialize(self) -> dict[str, Any]: ...
        def set_state(self, state: str, pipeline: Any = None) -> None: ...
        def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int: ...
        def increment_successful_job_count(self, pipeline: Any = None) -> None: ...
        def increment_total_working_time(self, job_execution_time: Any, pipeline: Any
                                         ) -> None: ...
        def cleanup_execution(self, job: Any, pipeline: Any, execution: Any = None
                              ) -> None: ...

    def reorder_queues(self, reference_queue: Any) -> None:
        """Fair turns between the batcher queues this worker serves: after a job of one,
        every other comes first, within each priority tier (urgent, high, normal)."""
        self._ordered_queues = fair_order(self._ordered_queues, reference_queue.name)

    @property
    def dequeue_timeout(self) -> int:
        # RQ blocks in a dequeue for worker_ttl - 15 s; a pattern's new queues are looked for
        # between two dequeues (_pick_up_new_queues, from the heartbeat before each), so
        # those waits end in time for the next look
        parent: Any = super()
        wait = int(parent.dequeue_timeout)
        return wait if self.queue_finder is None else max(1, min(wait,
                                                                  int(self.rescan_seconds)))

    def _pick_up_new_queues(self) -> None:
        """Serve the queues ``queue_finder`` names that this worker does not serve yet."""
        if self.queue_finder is None or time.monotonic() < self._rescan_due:
            return
        self._rescan_due = time.monotonic() + self.rescan_seconds
        try:
            known = set(self.queue_names())
            new = [name for name in self.queue_finder() if name not in known]
            if not new:
                return
            added = [self.queue_class(name, connection=self.connection,
                                      job_class=self.job_class, serializer=self.serializer)
                     for name in new]
            with self.connection.pipeline() as pipe:
                # RQ's registration (rq:workers:<queue>, the hash's queues) names them too
                pipe.hset(self.key, "queues", ",".join([*self.queue_names(), *new]))
                for name in new:
                    pipe.sadd(worker_registration.WORKERS_BY_QUEUE_KEY % name, self.key)
                pipe.execute()
        except redis.RedisError as exc:
            # the next look is a rescan_seconds away; the queues served so far carry on
            log.warning("worker.rescan_failed", error=str(exc))
            return
        self.queues.extend(added)
        # urgent tier first, as at the start; a stable sort keeps the turns within each tier
        self._ordered_queues = sorted([*self._ordered_queues, *added],
                                      key=lambda q: _tier(q.name))
        log.info("worker.queues_added", name=self.name,
                 queues=list(dict.fromkeys(_batcher_queue(n) for n in new)))

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        parent: Any = super()
        if timeout is not None or pipeline is not None:
            parent.heartbeat(timeout, pipeline=pipeline)
            return
        self._pick_up_new_queues()
        now = time.monotonic()
        if now < self._plain_heartbeat_due and self._deferred_state is None:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            if self._deferred_state is not None:
                parent.set_state(self._deferred_state, pipeline=pipe)
                self._deferred_state = None
            parent.heartbeat(pipeline=pipe)
            self._ask_registered(pipe)
            self._register_again_if_missing(pipe.execute())
        self._plain_heartbeat_due = now + PLAIN_HEARTBEAT_EVERY_SECONDS

    def _ask_registered(self, pipe: Any) -> None:
        if self.check_registration:
            pipe.sismember(worker_registration.REDIS_WORKER_KEYS, self.key)

    def _register_again_if_missing(self, replies: list[Any]) -> None:
        if not self.check_registration or replies[-1]:
            return
        # RQ's register_birth without its "already active" check (our heartbeat just wrote
        # the key): the whole worker hash again, listed in rq:workers and per queue
        with self.connection.pipeline() as pipe:
            pipe.delete(self.key)
            pipe.hset(self.key, mapping=self.serialize())
            worker_registration.register(self, pipe)  # type: ignore[arg-type]
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()
        log.warning("worker.registered_again", name=self.name,
                    why="RQ's Redis no longer listed this worker")

    def teardown(self) -> None:
        # RQ's SIGTERM handler raises StopRequested wherever the signal lands; in the middle
        # of a pipeline's replies that leaves them unread on a connection back in the pool
        # (redis-py drops a connection only when the read itself is interrupted), and the
        # teardown's MULTI/EXEC would read them: "Wrong number of response items", exit 1.
        # After a stop request the idle connections are closed; the teardown opens its own.
        if getattr(self, "_shutdown_requested_date", None) is not None:
            self.connection.connection_pool.disconnect(inuse_connections=False)
        parent: Any = super()
        parent.teardown()

    def check_for_suspension(self, burst: bool) -> None:
        now = time.monotonic()
        if now < self._suspension_check_due:
            return
        parent: Any = super()  # RQ's worker class, after this mixin in the MRO
        parent.check_for_suspension(burst)
        self._suspension_check_due = time.monotonic() + SUSPENSION_CHECK_EVERY_SECONDS

    def handle_execution_ended(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> None:
        if _plain_batch_job(job):
            # RQ heartbeats the job here to cover its success callback; a batch job has none
            # and its commit follows at once, inside the TTL its start set
            job.ended_at = now()
            return
        parent: Any = super()
        parent.handle_execution_ended(job, queue, *args, **kwargs)

    def handle_job_success(self, job: Any, queue: Any, started_job_registry: Any,
                           *args: Any, **kwargs: Any) -> None:
        execution = kwargs.get("execution", args[0] if args else None)
        if execution is None or not _plain_batch_job(job):
            parent: Any = super()
            parent.handle_job_success(job, queue, started_job_registry, *args, **kwargs)
            return
        # RQ's commit without its WATCH and read of the job's dependents (two round trips):
        # no job can depend on a batch job, whose id only the dispatcher knows
        with self.connection.pipeline() as pipe:  # MULTI/EXEC, as RQ's own
            self.increment_successful_job_count(pipeline=pipe)
            self.increment_total_working_time(job.ended_at - job.started_at, pipe)
            job.cleanup(0, pipeline=pipe, remove_from_queue=False)
            job._status = JobStatus.FINISHED
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            if self._heartbeat_in_commit:
                # the heartbeat RQ's loop sends right after the job (restoring the TTL the
                # job's start shortened) and the idle state, one round trip earlier
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
                self.heartbeat(pipeline=pipe)
            self._ask_registered(pipe)
            self._register_again_if_missing(pipe.execute())
        if self._heartbeat_in_commit:
            self._deferred_state = None
            self._plain_heartbeat_due = time.monotonic() + PLAIN_HEARTBEAT_EVERY_SECONDS
            self._heartbeat_sent_with_commit = True

    def execute_job(self, job: Any, queue: Any) -> Any:
        # only batch jobs: checked before RQ prepares, forks for or imports anything
        reason = guard.refusal(job, self.allowed_functions)
        if reason is not None:
            guard.refuse(self, job, queue, reason)
            return None
        try:
            parent: Any = super()
            return parent.execute_job(job, queue)
        finally:
            if not self._heartbeat_sent_with_commit:
                self._plain_heartbeat_due = 0.0
            self._heartbeat_sent_with_commit = False

    def _start_batch_job(self, pipe: Any, job: Any, remove_from_intermediate_queue: bool
                         ) -> None:
        """RQ 3's prepare_job_execution body on ``pipe`` (a MULTI/EXEC), plus the batch's
        claim: the job runs next in this process, so the claim costs no round trip. Its
        outcome goes to ``job.claimed``; a claim whose reply is an error (NOSCRIPT) is simply
        made again by the task."""
        with pipe:
            ttl = self.get_heartbeat_ttl(job)
            self.heartbeat(ttl, pipeline=pipe)
            job.heartbeat(now(), ttl, pipeline=pipe)
            job.prepare_for_execution(self.name, pipeline=pipe)
            pipe.persist(job.key)
            if remove_from_intermediate_queue:
                queue = self.queue_class(job.origin, connection=self.connection)
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            args = batch_args(job)
            ctx = None if args is None else processing.context(args[0], job.connection)
            scripts = None
            # with the batch's keys on another Redis (BATCH_RQ_REDIS_URL) the task claims
            # there after this start, a round trip of its own; a crash between the two leaves
            # a started job and an unclaimed batch, which the reaper dispatches again
            if args is not None and ctx is not None and not ctx.config.rq_apart:
                scripts = ctx.scripts
                job.claimant = processing.new_claimant()
                scripts.claim_into(pipe, args[1], args[2], claimant=job.claimant)
            replies = pipe.execute(raise_on_error=scripts is None)
            if scripts is None or args is None:
                return
            for reply in replies[:-2]:
                if isinstance(reply, Exception):
                    raise reply
            reply, record = replies[-2:]
            if not (isinstance(reply, Exception) or isinstance(record, Exception)):
                job.claimed = scripts.claim_outcome(args[1], reply, record)


def _batcher_queue(rq_name: str) -> str:
    # RQ queue "batcher.<Q>[.high|.urgent]"; a queue name has no '.'
    parts = rq_name.split(".")
    return parts[1] if len(parts) > 1 else rq_name


_TIER = {"urgent": 0, "high": 1}


def _tier(rq_name: str) -> int:
    parts = rq_name.split(".")
    return _TIER.get(parts[2], 2) if len(parts) > 2 else 2


def fair_order(ordered: list[Any], served: str) -> list[Any]:
    """RQ queues (objects with ``.name``) ordered urgent tier first as given, each tier
    rotated so the batcher queue after the one of ``served`` (an RQ queue name) comes first:
    no queue waits behind another's backlog, and urgent still goes before high and normal."""
    names = list(dict.fromkeys(_batcher_queue(q.name) for q in ordered))
    served_queue = _batcher_queue(served)
    if len(names) < 2 or served_queue not in names:
        return ordered
    cut = names.index(served_queue) + 1
    turn = {name: i for i, name in enumerate(names[cut:] + names[:cut])}
    return sorted(ordered, key=lambda q: (_tier(q.name), turn[_batcher_queue(q.name)]))


def _plain_batch_job(job: Any) -> bool:
    """A batch job as the dispatcher enqueues it: no result kept, no callbacks, no dependents
    (nothing can depend on a job id the dispatcher makes), no repeat, group or rate limit."""
    return (isinstance(job, BatchJob) and job._plain() and job.result_ttl == 0
            and job.success_callback is None and job.failure_callback is None
            and getattr(job, "repeats_left", None) is None)


class BatchSimpleWorker(LeanHeartbeats, SimpleWorker):
    """RQ's ``SimpleWorker`` (jobs in the worker's own process)."""

    _heartbeat_in_commit = True
    _in_job = False
    _start_pipe: Any = None  # a batch job's execution record, sent with its start

    def prepare_execution(self, job: Any) -> Any:
        self._start_pipe = None  # never carry a start over to another job
        if not _plain_batch_job(job):
            return super().prepare_execution(job)
        # RQ writes the execution record in one MULTI/EXEC and, first thing in perform_job,
        # the job's start in another; in this process nothing runs between the two, so
        # prepare_job_execution sends both (RQ 3's two bodies, in order, in one transaction)
        pipe = self.connection.pipeline()
        execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipe,
                                     worker_name=self.name)
        self.executions[execution.id] = execution
        self.set_state(WorkerStatus.BUSY, pipeline=pipe)
        self._start_pipe = pipe
        return execution

    def prepare_job_execution(self, job: Any, remove_from_intermediate_queue: bool = False
                              ) -> None:
        pipe, self._start_pipe = self._start_pipe, None
        if pipe is None:
            super().prepare_job_execution(job, remove_from_intermediate_queue)
            return
        self._start_batch_job(pipe, job, remove_from_intermediate_queue)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # no horse writes the state behind our back here: a repeated IDLE is a wasted trip
        if pipeline is None and state == self._state:
            return
        if pipeline is None and self._in_job and state == WorkerStatus.IDLE:
            # the job's last step; RQ's loop heartbeats next, and that round trip carries it
            self._state = state
            self._deferred_state = state
            return
        super().set_state(state, pipeline=pipeline)

    def execute_job(self, job: Any, queue: Any) -> Any:
        self._in_job = True
        try:
            return super().execute_job(job, queue)
        finally:
            self._in_job = False


class BatchWorker(LeanHeartbeats, Worker):
    """RQ's forking ``Worker`` (one work horse per job)."""

    def execute_job(self, job: Any, queue: Any) -> Any:
        try:
            return super().execute_job(job, queue)
        finally:
            # the horse is gone, and with it what it learnt of a moved slot (a failover)
            processing.follow_moved_slots()

    def prepare_job_execution(self, job: Any, remove_from_intermediate_queue: bool = False
                              ) -> None:
        # runs in the work horse, which performs the job right after
        if not _plain_batch_job(job):
            super().prepare_job_execution(job, remove_from_intermediate_queue)
            return
        self._start_batch_job(self.connection.pipeline(), job, remove_from_intermediate_queue)
        message = f"Processing {job.func_name} from {job.origin} since {time.time()}"
        self.procline(message)  # type: ignore[no-untyped-call]
