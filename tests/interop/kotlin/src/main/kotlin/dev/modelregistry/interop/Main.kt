// The Kotlin client flow against a running modelregistry server: grpc-kotlin coroutine stubs
// generated at build time from protos/ (see pom.xml). The same flow as tests/interop/go.
//
// Run by tests/interop/test_kotlin_client.py (`make interop`), which starts the server and
// sets MODELREGISTRY_ADDRESS (host:port, plaintext) and MODELREGISTRY_KEY (an API key).
package dev.modelregistry.interop

import com.google.protobuf.ByteString
import com.google.rpc.BadRequest
import com.google.rpc.ErrorInfo
import dev.modelregistry.v1.CreateModelRequest
import dev.modelregistry.v1.DownloadArtifactRequest
import dev.modelregistry.v1.FileSpec
import dev.modelregistry.v1.GetManifestRequest
import dev.modelregistry.v1.Model
import dev.modelregistry.v1.ModelServiceGrpcKt
import dev.modelregistry.v1.ModelServiceGrpcKt.ModelServiceCoroutineStub
import dev.modelregistry.v1.ModelVersion
import dev.modelregistry.v1.PublishVersionRequest
import dev.modelregistry.v1.QueryUploadStatusRequest
import dev.modelregistry.v1.QueryUploadStatusResponse
import dev.modelregistry.v1.UploadArtifactsRequest
import dev.modelregistry.v1.UploadFileHeader
import dev.modelregistry.v1.UploadTarget
import dev.modelregistry.v1.VersionServiceGrpcKt
import dev.modelregistry.v1.VersionServiceGrpcKt.VersionServiceCoroutineStub
import io.grpc.ManagedChannelBuilder
import io.grpc.Metadata
import io.grpc.Status
import io.grpc.StatusException
import io.grpc.protobuf.StatusProto
import io.grpc.stub.MetadataUtils
import java.security.MessageDigest
import java.security.SecureRandom
import java.util.HexFormat
import java.util.UUID
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicReference
import kotlin.system.exitProcess
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitCancellation
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.flow
import kotlinx.coroutines.flow.fold
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout

private const val MIB = 1 shl 20
private const val CHUNK = MIB
// The server commits uploads in parts of 8 MiB: the first attempt sends more than one part,
// then the "connection drops", so the resume has something committed to start from.
private const val FILE_SIZE = 2 * 8 * MIB + 1536 * 1024
private const val CUT_AFTER = 11 * MIB
private const val ERROR_DOMAIN = "modelregistry.dev"

private fun hex(bytes: ByteArray): String = HexFormat.of().formatHex(bytes)

private fun sha256(bytes: ByteArray): String = hex(MessageDigest.getInstance("SHA-256").digest(bytes))

/** The requests of one UploadArtifacts attempt: target, file header, data[from, to). */
private fun uploadRequests(
    parent: String,
    spec: FileSpec,
    uploadId: String,
    data: ByteArray,
    from: Int,
    to: Int,
    thenHang: Boolean = false,
): Flow<UploadArtifactsRequest> = flow {
    emit(UploadArtifactsRequest.newBuilder().setTarget(UploadTarget.newBuilder().setParent(parent)).build())
    emit(
        UploadArtifactsRequest.newBuilder()
            .setFile(
                UploadFileHeader.newBuilder()
                    .setFile(spec)
                    .setFormat("onnx")
                    .setUploadId(uploadId)
                    .setWriteOffset(from.toLong()),
            )
            .build(),
    )
    var off = from
    while (off < to) {
        val end = minOf(off + CHUNK, to)
        emit(UploadArtifactsRequest.newBuilder().setChunk(ByteString.copyFrom(data, off, end - off)).build())
        off = end
    }
    if (thenHang) awaitCancellation()
}

fun main(args: Array<String>) {
    if (args.contentEquals(arrayOf("--build-only"))) {
        // `make interop-build`: compiled, stubs present, exec plugin resolved; no server needed.
        println("built against ${ModelServiceGrpcKt.SERVICE_NAME} and ${VersionServiceGrpcKt.SERVICE_NAME}")
        return
    }
    val address = System.getenv("MODELREGISTRY_ADDRESS")
    val key = System.getenv("MODELREGISTRY_KEY")
    if (address.isNullOrEmpty() || key.isNullOrEmpty()) {
        System.err.println("set MODELREGISTRY_ADDRESS and MODELREGISTRY_KEY")
        exitProcess(2)
    }
    val channel = ManagedChannelBuilder.forTarget(address).usePlaintext().build()
    try {
        runBlocking { withTimeout(120_000) { flow(channel, key) } }
        println("KOTLIN INTEROP FLOW PASSED")
    } finally {
        channel.shutdownNow().awaitTermination(10, TimeUnit.SECONDS)
    }
}

private suspend fun flow(channel: io.grpc.ManagedChannel, key: String) {
    val auth = Metadata().apply {
        put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer $key")
    }
    val headers = AtomicReference<Metadata>()
    val trailers = AtomicReference<Metadata>()
    val models = ModelServiceCoroutineStub(channel).withInterceptors(
        MetadataUtils.newAttachHeadersInterceptor(auth),
        MetadataUtils.newCaptureMetadataInterceptor(headers, trailers),
    )
    val versions = VersionServiceCoroutineStub(channel)
        .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(auth))
    val random = SecureRandom()
    val modelId = "kt-interop-" + hex(ByteArray(4).also(random::nextBytes))
    val parent = "models/$modelId/versions/1.0.0"

    // 1. Create a model.
    val model = models.createModel(
        CreateModelRequest.newBuilder()
            .setModelId(modelId)
            .setModel(Model.newBuilder().setFramework("onnx").addTags("interop").addTags("kotlin"))
            .build(),
    )
    check(model.name == "models/$modelId" && model.enabled) { "CreateModel returned $model" }
    println("created ${model.name}")

    // 2. Stream an upload, cut it off on purpose, and resume it.
    val data = ByteArray(FILE_SIZE).also(random::nextBytes)
    val digest = sha256(data)
    val spec = FileSpec.newBuilder()
        .setFileName("model.onnx")
        .setSizeBytes(data.size.toLong())
        .setSha256(digest)
        .build()
    val uploadId = UUID.randomUUID().toString()
    suspend fun status(): QueryUploadStatusResponse? = try {
        versions.queryUploadStatus(QueryUploadStatusRequest.newBuilder().setUploadId(uploadId).build())
    } catch (e: StatusException) {
        if (e.status.code != Status.Code.NOT_FOUND) throw e
        null
    }

    kotlinx.coroutines.coroutineScope {
        val first = async {
            versions.uploadArtifacts(uploadRequests(parent, spec, uploadId, data, 0, CUT_AFTER, thenHang = true))
        }
        while ((status()?.committedSize ?: 0L) == 0L) delay(50)
        first.cancel() // the connection "drops" mid-file
        try {
            first.await()
            error("the cut-off upload succeeded")
        } catch (e: CancellationException) {
            // expected
        }
    }
    val afterCut = status() ?: error("no status for upload $uploadId after the cut")
    val committed = afterCut.committedSize
    check(!afterCut.complete && committed > 0 && committed <= CUT_AFTER) {
        "after the cut: committed $committed of $CUT_AFTER sent, complete ${afterCut.complete}"
    }
    println("cut off after $CUT_AFTER bytes; $committed committed; resuming from there")
    val uploaded = versions.uploadArtifacts(
        uploadRequests(parent, spec, uploadId, data, committed.toInt(), data.size),
    )
    val file = uploaded.filesList.single()
    check(file.sha256 == digest && file.sizeBytes == data.size.toLong() && file.uploadId == uploadId) {
        "upload response files: ${uploaded.filesList}"
    }
    val resource = uploaded.packagesList[0].resourcesList[0]
    val done = status()
    check(done != null && done.complete && done.committedSize == data.size.toLong()) {
        "QueryUploadStatus after completion: $done"
    }

    // 3. Publish the version.
    val published = versions.publishVersion(PublishVersionRequest.newBuilder().setName(parent).build())
    check(published.state == ModelVersion.State.STATE_PUBLISHED) { "PublishVersion: ${published.state}" }

    // 4. Download the bytes and compare sha256.
    val md = MessageDigest.getInstance("SHA-256")
    var metaSha = ""
    val size = versions.downloadArtifact(DownloadArtifactRequest.newBuilder().setName(resource.name).build())
        .fold(0L) { total, msg ->
            if (msg.hasResource()) metaSha = msg.resource.sha256
            md.update(msg.data.asReadOnlyByteBuffer())
            total + msg.data.size()
        }
    check(hex(md.digest()) == digest && metaSha == digest && size == data.size.toLong()) {
        "downloaded $size bytes; resource sha256 $metaSha"
    }
    println("downloaded $size bytes, sha256 matches")

    // 5. The manifest, then the same manifest with its etag.
    val manifest = models.getManifest(GetManifestRequest.getDefaultInstance())
    val entry = manifest.modelsMap[modelId] ?: error("manifest lacks $modelId: ${manifest.modelsMap.keys}")
    check(manifest.etag.isNotEmpty() && !manifest.notModified) { "GetManifest: $manifest" }
    check(entry.latestVersion == "1.0.0" && entry.model == "models/$modelId") { "manifest entry: $entry" }
    val etagHeader = headers.get()?.get(Metadata.Key.of("etag", Metadata.ASCII_STRING_MARSHALLER))
    check(etagHeader == manifest.etag) { "etag response header $etagHeader, body etag ${manifest.etag}" }
    val again = models.getManifest(GetManifestRequest.newBuilder().setIfNoneMatch(manifest.etag).build())
    check(again.notModified && again.modelsCount == 0 && again.etag == manifest.etag) {
        "GetManifest(if_none_match): $again"
    }
    println("manifest etag ${manifest.etag}; not modified with it")

    // 6. A rich error: ErrorInfo reason and BadRequest field violations.
    val err = try {
        models.createModel(
            CreateModelRequest.newBuilder()
                .setModelId("Bad Name")
                .setModel(Model.newBuilder().setFramework("onnx"))
                .build(),
        )
        error("a bad CreateModel succeeded")
    } catch (e: StatusException) {
        e
    }
    check(err.status.code == Status.Code.INVALID_ARGUMENT) { "bad CreateModel: ${err.status}" }
    val rich = StatusProto.fromThrowable(err) ?: error("no google.rpc.Status in the trailers")
    val info = rich.detailsList.firstOrNull { it.`is`(ErrorInfo::class.java) }?.unpack(ErrorInfo::class.java)
    val violations = rich.detailsList.filter { it.`is`(BadRequest::class.java) }
        .flatMap { it.unpack(BadRequest::class.java).fieldViolationsList }
        .associate { it.field to it.description }
    check(info != null && info.reason.isNotEmpty() && info.domain == ERROR_DOMAIN) { "ErrorInfo: $info" }
    check("model_id" in violations) { "BadRequest field violations $violations lack model_id" }
    println("rich error: reason ${info.reason}, field violations $violations")
}
