"""RegistryService."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from foedus.server.errors import InvalidArgument
from foedus.server.interceptors import current_call, current_principal
from foedus.server.registry.service import RegistryService, VersionSpec
from foedus.server.servicers import convert
from foedus.server.servicers.base import BlockingRunner, ServicerBase
from foedus.server.store.records import VersionRecord
from foedus.v1 import registry_pb2, registry_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]
DOWNLOAD_CHUNK = 1024 * 1024
ANSWERS_KEPT = 256
ANSWER_BYTES_KEPT = 32 * 1024 * 1024
"""GetModelVersion answers kept for the last records the store handed out: at most this many, of at
most this many bytes in all, the oldest out first."""


def _selector(
    request: registry_pb2.GetModelVersionRequest | registry_pb2.DownloadArtifactRequest,
) -> tuple[int | None, str | None]:
    which = request.WhichOneof("selector")
    if which == "alias":
        return None, request.alias
    if which == "version":
        return request.version, None
    raise InvalidArgument("give a version number or an alias")


class RegistryServicer(ServicerBase, registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: RegistryService, runner: BlockingRunner) -> None:
        super().__init__(runner)
        self._registry = registry
        self._answers: dict[int, tuple[VersionRecord, registry_pb2.GetModelVersionResponse, int]] = {}
        self._answer_bytes = 0

    async def CreateModel(
        self, request: registry_pb2.CreateModelRequest, context: Ctx
    ) -> registry_pb2.CreateModelResponse:
        current_call().resource = f"models/{request.name}"
        record = await self.run(
            self._registry.create_model,
            current_principal(),
            request.name,
            request.description,
            dict(request.tags),
        )
        return registry_pb2.CreateModelResponse(model=convert.model(record))

    async def GetModel(
        self, request: registry_pb2.GetModelRequest, context: Ctx
    ) -> registry_pb2.GetModelResponse:
        record = await self.read(self._registry.get_model, current_principal(), request.name)
        return registry_pb2.GetModelResponse(model=convert.model(record))

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: Ctx
    ) -> registry_pb2.ListModelsResponse:
        page = await self.read(
            self._registry.list_models,
            current_principal(),
            request.name_prefix,
            request.page.page_token,
            request.page.page_size,
        )
        return registry_pb2.ListModelsResponse(
            models=[convert.model(m) for m in page.items], next_page_token=page.next_token
        )

    async def CreateModelVersion(
        self, request_iterator: AsyncIterator[registry_pb2.CreateModelVersionRequest], context: Ctx
    ) -> registry_pb2.CreateModelVersionResponse:
        messages = request_iterator.__aiter__()
        try:
            first = await messages.__anext__()
        except StopAsyncIteration:
            raise InvalidArgument("empty stream: send the version spec first") from None
        if first.WhichOneof("part") != "spec":
            raise InvalidArgument("the first message must carry the version spec")
        s = first.spec
        spec = VersionSpec(
            model=s.model,
            framework=s.framework,
            size_bytes=s.size_bytes,
            create_model=s.create_model,
            description=s.description,
            tags=dict(s.tags),
            aliases=tuple(s.aliases),
            lineage=convert.lineage_from_proto(s.lineage),
            reference_profile=convert.profile_from_proto(s.reference_profile)
            if s.HasField("reference_profile")
            else None,
        )
        current_call().resource = f"models/{spec.model}"
        registration = await self.run(self._registry.begin_registration, current_principal(), spec)
        try:
            digest = ""
            async for message in messages:
                part = message.WhichOneof("part")
                if part == "chunk" and not digest:
                    await self.run(registration.write, message.chunk)
                elif part == "sha256" and not digest:
                    digest = message.sha256 or "-"
                else:
                    raise InvalidArgument(
                        f"unexpected {part} message: send the spec, then chunks, then the sha256"
                    )
            if not digest:
                raise InvalidArgument(
                    f"the stream ended after {registration.received} bytes without the artifact's sha256; "
                    "the upload was cut off"
                )
            record = await self.run(registration.finish, digest)
        except BaseException:
            # Shielded: a call cancelled while it waits for the clean-up (a client that cuts the
            # stream is seen as its end first, then as a cancellation) still removes the upload.
            await asyncio.shield(self.run(registration.abort))
            raise
        current_call().resource = f"models/{record.model}/versions/{record.version}"
        return registry_pb2.CreateModelVersionResponse(version=convert.version(record))

    async def GetModelVersion(
        self, request: registry_pb2.GetModelVersionRequest, context: Ctx
    ) -> registry_pb2.GetModelVersionResponse:
        version, alias = _selector(request)
        record = await self.read(
            self._registry.get_version, current_principal(), request.model, version, alias
        )
        # The store hands out the same record while a version's row is unchanged: its answer is
        # built once. (Served on the event loop only; answers are never changed once built.)
        seen = self._answers.get(id(record))
        if seen is not None and seen[0] is record:
            return seen[1]
        answer = registry_pb2.GetModelVersionResponse(version=convert.version(record))
        size = answer.ByteSize()
        if size <= ANSWER_BYTES_KEPT:
            stale = self._answers.pop(id(record), None)
            if stale is not None:
                self._answer_bytes -= stale[2]
            self._answers[id(record)] = (record, answer, size)
            self._answer_bytes += size
            while len(self._answers) > ANSWERS_KEPT or self._answer_bytes > ANSWER_BYTES_KEPT:
                self._answer_bytes -= self._answers.pop(next(iter(self._answers)))[2]
        return answer

    async def ListModelVersions(
        self, request: registry_pb2.ListModelVersionsRequest, context: Ctx
    ) -> registry_pb2.ListModelVersionsResponse:
        page = await self.read(
            self._registry.list_versions,
            current_principal(),
            request.model,
            request.include_archived,
            request.page.page_token,
            request.page.page_size,
        )
        return registry_pb2.ListModelVersionsResponse(
            versions=[convert.version(v) for v in page.items], next_page_token=page.next_token
        )

    async def SetAlias(
        self, request: registry_pb2.SetAliasRequest, context: Ctx
    ) -> registry_pb2.SetAliasResponse:
        current_call().resource = f"models/{request.model}/aliases/{request.alias}"
        current_call().detail = f"-> version {request.version}"
        record, previous = await self.run(
            self._registry.set_alias, current_principal(), request.model, request.alias, request.version
        )
        return registry_pb2.SetAliasResponse(model=convert.model(record), previous_version=previous)

    async def DeleteAlias(
        self, request: registry_pb2.DeleteAliasRequest, context: Ctx
    ) -> registry_pb2.DeleteAliasResponse:
        current_call().resource = f"models/{request.model}/aliases/{request.alias}"
        record = await self.run(
            self._registry.delete_alias, current_principal(), request.model, request.alias
        )
        return registry_pb2.DeleteAliasResponse(model=convert.model(record))

    async def ArchiveModelVersion(
        self, request: registry_pb2.ArchiveModelVersionRequest, context: Ctx
    ) -> registry_pb2.ArchiveModelVersionResponse:
        current_call().resource = f"models/{request.model}/versions/{request.version}"
        record = await self.run(
            self._registry.archive_version, current_principal(), request.model, request.version
        )
        return registry_pb2.ArchiveModelVersionResponse(version=convert.version(record))

    async def RecordEvaluation(
        self, request: registry_pb2.RecordEvaluationRequest, context: Ctx
    ) -> registry_pb2.RecordEvaluationResponse:
        current_call().resource = f"models/{request.model}/versions/{request.version}"
        current_call().detail = f"dataset {request.evaluation.dataset}"
        record = await self.run(
            self._registry.record_evaluation,
            current_principal(),
            request.model,
            request.version,
            convert.evaluation_from_proto(request.evaluation),
        )
        return registry_pb2.RecordEvaluationResponse(version=convert.version(record))

    async def DownloadArtifact(
        self, request: registry_pb2.DownloadArtifactRequest, context: Ctx
    ) -> AsyncIterator[registry_pb2.DownloadArtifactResponse]:
        version, alias = _selector(request)
        record, blob = await self.run(
            self._registry.open_artifact, current_principal(), request.model, version, alias
        )
        try:
            yield registry_pb2.DownloadArtifactResponse(
                header=registry_pb2.ArtifactHeader(
                    model=record.model,
                    version=record.version,
                    artifact=registry_pb2.Artifact(
                        sha256=record.artifact_sha256,
                        size_bytes=record.artifact_size,
                        framework=record.framework,
                        onnx_opset=record.onnx_opset,
                    ),
                )
            )
            while chunk := await self.run(blob.read, DOWNLOAD_CHUNK):
                yield registry_pb2.DownloadArtifactResponse(chunk=chunk)
        finally:
            blob.close()
