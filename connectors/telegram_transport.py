"""python-telegram-bot's requests carried by aiohttp (connectors/http.py says why not httpx).

PTB builds every Bot API call and parses every answer; this class only moves the bytes, the
way PTB's own ``HTTPXRequest`` does: JSON-able parameters as a form, files as multipart, the
per-call timeouts honoured, and transport failures raised as PTB's ``TimedOut`` and
``NetworkError`` so connectors/telegram.py maps them as before.
"""

from __future__ import annotations

import asyncio
from typing import Optional

import aiohttp
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput

from connectors.http import LoopSession


class AiohttpRequest(BaseRequest):
    """A ``telegram.request.BaseRequest`` on one aiohttp session per event loop."""

    def __init__(self, timeout: float = 10.0, connections: int = 100) -> None:
        self._timeout = timeout
        self._transport = LoopSession(timeout, connections)

    @property
    def read_timeout(self) -> Optional[float]:
        return self._timeout

    async def initialize(self) -> None:
        """Nothing to open ahead: the session is made on first use, on the loop that uses it."""

    async def shutdown(self) -> None:
        await self._transport.close()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: Optional[RequestData] = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        def chosen(value: ODVInput[float]) -> Optional[float]:
            return self._timeout if isinstance(value, DefaultValue) else value

        read, connect = chosen(read_timeout), chosen(connect_timeout)
        # PTB adds a long poll's wait to read_timeout for getUpdates: the read bound is per call.
        # aiohttp has no separate pool or write timeout; connect covers waiting for a connection.
        timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=read)
        data: Optional[object] = None
        if request_data is not None:
            files = request_data.multipart_data
            if files:
                form = aiohttp.FormData()
                for name, value in (request_data.json_parameters or {}).items():
                    form.add_field(name, value)
                for name, part in files.items():
                    filename, content, mime = part[0], part[1], part[2] if len(part) > 2 else None
                    form.add_field(name, content, filename=filename, content_type=mime)
                data = form
            else:
                data = request_data.json_parameters
        try:
            async with self._transport.session().request(
                method, url, data=data, timeout=timeout, headers={"User-Agent": self.USER_AGENT}
            ) as response:
                return response.status, await response.read()
        except asyncio.TimeoutError as err:
            raise TimedOut from err
        except aiohttp.ClientError as err:
            raise NetworkError(f"aiohttp.{type(err).__name__}: {err}") from err
