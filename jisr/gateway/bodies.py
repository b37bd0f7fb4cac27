"""Reading an uploaded file's body with a size cap: the one place API routes do it."""

from __future__ import annotations

from fastapi import HTTPException, Request


async def read_capped_body(request: Request, limit: int, too_large: str) -> bytes:
    """The request body, refused with 413 ``too_large`` past ``limit`` bytes.

    A Content-Length over the limit is refused before reading anything; the body is then read
    in chunks and refused as soon as it passes the limit (a client may send no length, or a
    wrong one), so an oversized upload never sits whole in memory.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)
