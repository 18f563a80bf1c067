"""``AsyncEngine``: the engine's step loop on a thread of its own, for asyncio servers.

``LLMEngine`` is single-threaded. ``AsyncEngine`` owns it and runs it on one background
thread: requests and aborts reach that thread through a queue, and each request's outputs
come back to the caller's event loop through an ``asyncio.Queue``. ``generate`` is an async
iterator of ``RequestOutput`` snapshots; leaving it early (a client that went away) aborts
the request and frees its pages.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from engine.runtime.llm_engine import LLMEngine, Prompt
from engine.runtime.outputs import RequestOutput
from engine.runtime.sampling_params import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class _Add:
    request_id: str
    prompt: Prompt
    params: SamplingParams
    cache_salt: str
    deliver: Callable[[RequestOutput | BaseException], None]


@dataclass
class _Abort:
    request_id: str


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.Queue[_Add | _Abort | None] = queue.Queue()
        self._deliver: dict[str, Callable[[RequestOutput | BaseException], None]] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="kvtier-engine", daemon=True)
        self._stopped = False
        self.num_running = 0
        self.num_waiting = 0
        self._thread.start()

    # -- the engine thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            busy = self.engine.has_unfinished_requests()
            try:
                command = self._commands.get(block=not busy, timeout=None if not busy else 0)
            except queue.Empty:
                command = ...
            if command is None:
                return
            if command is not ...:
                self._apply(command)
                continue  # drain every pending command before the next step
            try:
                outputs = self.engine.step()
            except Exception as e:  # a bug in the engine: fail its requests, keep serving
                log.exception("engine step failed")
                self._fail_all(e)
                continue
            self.num_running = len(self.engine.scheduler.running)
            self.num_waiting = len(self.engine.scheduler.waiting)
            for out in outputs:
                deliver = self._deliver.get(out.request_id)
                if deliver is not None:
                    deliver(out)
                    if out.finished:
                        del self._deliver[out.request_id]

    def _apply(self, command: _Add | _Abort) -> None:
        if isinstance(command, _Abort):
            self._deliver.pop(command.request_id, None)
            self.engine.abort(command.request_id)
            return
        try:
            self.engine.add_request(command.prompt, command.params, command.request_id, command.cache_salt)
        except ValueError as e:  # InvalidRequestError and friends: the caller's mistake
            command.deliver(e)
            return
        self._deliver[command.request_id] = command.deliver

    def _fail_all(self, error: BaseException) -> None:
        for request_id, deliver in list(self._deliver.items()):
            self.engine.abort(request_id)
            deliver(RuntimeError(f"the engine failed while serving this request: {error}"))
        self._deliver.clear()

    # -- callers (any thread with an event loop) -----------------------------------------

    async def generate(
        self, prompt: Prompt, params: SamplingParams, cache_salt: str = "", request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Outputs of one request as tokens arrive; raises the engine's ``ValueError`` if
        the request is refused (a prompt too long, say)."""
        if self._stopped:
            raise RuntimeError("the engine is shutting down")
        request_id = request_id or f"req-{next(self._ids)}"
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._commands.put(_Add(request_id, prompt, params, cache_salt,
                                lambda item: loop.call_soon_threadsafe(outputs.put_nowait, item)))
        finished = False
        try:
            while not finished:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._commands.put(_Abort(request_id))

    def shutdown(self) -> None:
        self._stopped = True
        self._commands.put(None)
        self._thread.join(timeout=30)
