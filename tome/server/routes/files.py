"""The files API: POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET /v1/files/{id}/content
(the extracted text). A key sees only the files it uploaded; another key's are 404."""

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse

from tome.server.auth import authenticate
from tome.server.errors_json import BY_ID, WITH_BODY, error_responses
from tome.server.limits import Caller
from tome.server.schemas.files import FileDeleted, FileList, FileObject
from tome.server.state import server_state
from tome.server.uploads import check_upload, file_store, store_upload

router = APIRouter()
Authenticated = Annotated[Caller, Depends(authenticate)]


@router.post("/v1/files", responses=error_responses(400, 401, 403, 413, 415))
async def create_file(
    file: UploadFile,
    purpose: Annotated[Literal["file-extract"], Form()],
    request: Request,
    caller: Authenticated,
) -> FileObject:
    filename = check_upload(file.filename, file.size, purpose, caller)
    data = await file.read()
    record = await store_upload(server_state(request), caller, data, filename, purpose)
    return FileObject.of(record)


@router.get("/v1/files", responses=WITH_BODY)
async def list_files(
    request: Request, caller: Authenticated, purpose: str | None = None
) -> FileList:
    store = file_store(server_state(request))
    records = await asyncio.to_thread(store.all, caller.key_id, purpose)
    return FileList(data=[FileObject.of(record) for record in records])


@router.get("/v1/files/{file_id}", responses=BY_ID)
async def retrieve_file(file_id: str, request: Request, caller: Authenticated) -> FileObject:
    store = file_store(server_state(request))
    return FileObject.of(await asyncio.to_thread(store.get, caller.key_id, file_id))


@router.get("/v1/files/{file_id}/content", response_class=PlainTextResponse, responses=BY_ID)
async def file_content(file_id: str, request: Request, caller: Authenticated) -> str:
    store = file_store(server_state(request))
    return await asyncio.to_thread(store.text, caller.key_id, file_id)


@router.delete("/v1/files/{file_id}", responses=BY_ID)
async def delete_file(file_id: str, request: Request, caller: Authenticated) -> FileDeleted:
    store = file_store(server_state(request))
    await asyncio.to_thread(store.delete, caller.key_id, file_id)
    return FileDeleted(id=file_id)
