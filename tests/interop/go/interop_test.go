// Package interop drives a running modelregistry server with the Go client generated
// under generated/go: the flow a Go service or device agent goes through.
//
// Run by tests/interop/test_go_client.py (`make interop`), which starts the server and
// sets MODELREGISTRY_ADDRESS (host:port, plaintext) and MODELREGISTRY_KEY (an API key).
package interop

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mr "modelregistry/generated/go/modelregistry/v1"
)

const (
	mib       = 1 << 20
	chunkSize = 1 * mib
	// The server commits uploads in parts of 8 MiB; the first attempt sends more than one
	// part and is then cut off, so a resume has something committed to start from.
	fileSize  = 2*8*mib + 1536*1024
	cutAfter  = 11 * mib
	errDomain = "modelregistry.dev"
)

type client struct {
	models   mr.ModelServiceClient
	versions mr.VersionServiceClient
	key      string
}

func (c *client) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.key)
}

func dial(t *testing.T) *client {
	addr, key := os.Getenv("MODELREGISTRY_ADDRESS"), os.Getenv("MODELREGISTRY_KEY")
	if addr == "" || key == "" {
		t.Fatal("set MODELREGISTRY_ADDRESS and MODELREGISTRY_KEY (tests/interop/test_go_client.py does)")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{mr.NewModelServiceClient(conn), mr.NewVersionServiceClient(conn), key}
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func uuid4(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// sendFile opens an UploadArtifacts stream for parent and sends data[from:to] of one file.
func sendFile(stream mr.VersionService_UploadArtifactsClient, parent string, spec *mr.FileSpec,
	uploadID string, data []byte, from, to int) error {
	msgs := []*mr.UploadArtifactsRequest{
		{Payload: &mr.UploadArtifactsRequest_Target{Target: &mr.UploadTarget{Parent: parent}}},
		{Payload: &mr.UploadArtifactsRequest_File{File: &mr.UploadFileHeader{
			File: spec, Format: "onnx", UploadId: uploadID, WriteOffset: int64(from),
		}}},
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	for off := from; off < to; off += chunkSize {
		end := min(off+chunkSize, to)
		if err := stream.Send(&mr.UploadArtifactsRequest{
			Payload: &mr.UploadArtifactsRequest_Chunk{Chunk: data[off:end]},
		}); err != nil {
			return err
		}
	}
	return nil
}

func TestFlow(t *testing.T) {
	c := dial(t)
	modelID := "go-interop-" + randomHex(t, 4)
	parent := "models/" + modelID + "/versions/1.0.0"

	// 1. Create a model.
	model, err := c.models.CreateModel(c.ctx(t), &mr.CreateModelRequest{
		ModelId: modelID,
		Model:   &mr.Model{Framework: "onnx", Tags: []string{"interop", "go"}},
	})
	if err != nil {
		t.Fatalf("CreateModel: %v", err)
	}
	if model.GetName() != "models/"+modelID || !model.GetEnabled() {
		t.Fatalf("CreateModel returned %v", model)
	}

	// 2. Stream an upload, cut it off on purpose, and resume it.
	data := make([]byte, fileSize)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	spec := &mr.FileSpec{FileName: "model.onnx", SizeBytes: int64(len(data)), Sha256: digest}
	uploadID := uuid4(t)

	cutCtx, cut := context.WithCancel(c.ctx(t))
	first, err := c.versions.UploadArtifacts(cutCtx)
	if err != nil {
		t.Fatalf("UploadArtifacts: %v", err)
	}
	if err := sendFile(first, parent, spec, uploadID, data, 0, cutAfter); err != nil {
		t.Fatalf("first upload attempt: %v", err)
	}
	var committed int64
	deadline := time.Now().Add(60 * time.Second)
	for committed == 0 {
		st, err := c.versions.QueryUploadStatus(c.ctx(t), &mr.QueryUploadStatusRequest{UploadId: uploadID})
		if err != nil && status.Code(err) != codes.NotFound {
			t.Fatalf("QueryUploadStatus: %v", err)
		}
		committed = st.GetCommittedSize()
		if time.Now().After(deadline) {
			t.Fatal("no bytes of the first attempt were committed")
		}
		if committed == 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	cut() // the connection "drops" mid-file
	if _, err := first.CloseAndRecv(); status.Code(err) != codes.Canceled {
		t.Fatalf("cut-off upload ended with %v, want Canceled", err)
	}
	st, err := c.versions.QueryUploadStatus(c.ctx(t), &mr.QueryUploadStatusRequest{UploadId: uploadID})
	if err != nil {
		t.Fatalf("QueryUploadStatus after the cut: %v", err)
	}
	committed = st.GetCommittedSize()
	if st.GetComplete() || committed <= 0 || committed > cutAfter {
		t.Fatalf("after the cut: committed %d of %d sent, complete %v", committed, cutAfter, st.GetComplete())
	}
	t.Logf("cut off after %d bytes; %d committed; resuming from there", cutAfter, committed)

	second, err := c.versions.UploadArtifacts(c.ctx(t))
	if err != nil {
		t.Fatalf("UploadArtifacts (resume): %v", err)
	}
	if err := sendFile(second, parent, spec, uploadID, data, int(committed), len(data)); err != nil {
		t.Fatalf("resumed upload: %v", err)
	}
	uploaded, err := second.CloseAndRecv()
	if err != nil {
		t.Fatalf("resumed upload: %v", err)
	}
	if len(uploaded.GetFiles()) != 1 || uploaded.GetFiles()[0].GetSha256() != digest ||
		uploaded.GetFiles()[0].GetSizeBytes() != int64(len(data)) || uploaded.GetFiles()[0].GetUploadId() != uploadID {
		t.Fatalf("upload response files: %v", uploaded.GetFiles())
	}
	resource := uploaded.GetPackages()[0].GetResources()[0]
	st, err = c.versions.QueryUploadStatus(c.ctx(t), &mr.QueryUploadStatusRequest{UploadId: uploadID})
	if err != nil || !st.GetComplete() || st.GetCommittedSize() != int64(len(data)) {
		t.Fatalf("QueryUploadStatus after completion: %v, %v", st, err)
	}

	// 3. Publish the version.
	published, err := c.versions.PublishVersion(c.ctx(t), &mr.PublishVersionRequest{Name: parent})
	if err != nil {
		t.Fatalf("PublishVersion: %v", err)
	}
	if published.GetState() != mr.ModelVersion_STATE_PUBLISHED {
		t.Fatalf("PublishVersion: state %v", published.GetState())
	}

	// 4. Download the bytes and compare sha256.
	dl, err := c.versions.DownloadArtifact(c.ctx(t), &mr.DownloadArtifactRequest{Name: resource.GetName()})
	if err != nil {
		t.Fatalf("DownloadArtifact: %v", err)
	}
	var got bytes.Buffer
	var meta *mr.ArtifactResource
	for {
		msg, err := dl.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("DownloadArtifact: %v", err)
		}
		if msg.GetResource() != nil {
			meta = msg.GetResource()
		}
		got.Write(msg.GetData())
	}
	gotSum := sha256.Sum256(got.Bytes())
	if hex.EncodeToString(gotSum[:]) != digest || meta.GetSha256() != digest || got.Len() != len(data) {
		t.Fatalf("downloaded %d bytes, sha256 %x; resource says %s", got.Len(), gotSum, meta.GetSha256())
	}

	// 5. The manifest, then the same manifest with its etag.
	var header metadata.MD
	manifest, err := c.models.GetManifest(c.ctx(t), &mr.GetManifestRequest{}, grpc.Header(&header))
	if err != nil {
		t.Fatalf("GetManifest: %v", err)
	}
	entry, ok := manifest.GetModels()[modelID]
	if !ok || manifest.GetEtag() == "" || manifest.GetNotModified() {
		t.Fatalf("GetManifest: etag %q, models %v", manifest.GetEtag(), manifest.GetModels())
	}
	if entry.GetLatestVersion() != "1.0.0" || entry.GetModel() != "models/"+modelID {
		t.Fatalf("manifest entry: %v", entry)
	}
	if etags := header.Get("etag"); len(etags) != 1 || etags[0] != manifest.GetEtag() {
		t.Fatalf("etag response header %v, body etag %q", etags, manifest.GetEtag())
	}
	again, err := c.models.GetManifest(c.ctx(t), &mr.GetManifestRequest{IfNoneMatch: manifest.GetEtag()})
	if err != nil {
		t.Fatalf("GetManifest(if_none_match): %v", err)
	}
	if !again.GetNotModified() || len(again.GetModels()) != 0 || again.GetEtag() != manifest.GetEtag() {
		t.Fatalf("GetManifest(if_none_match): %v", again)
	}

	// 6. A rich error: ErrorInfo reason and BadRequest field violations.
	_, err = c.models.CreateModel(c.ctx(t), &mr.CreateModelRequest{
		ModelId: "Bad Name", Model: &mr.Model{Framework: "onnx"},
	})
	st2 := status.Convert(err)
	if st2.Code() != codes.InvalidArgument {
		t.Fatalf("bad CreateModel: %v, want InvalidArgument", err)
	}
	var info *errdetails.ErrorInfo
	violations := map[string]string{}
	for _, d := range st2.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				violations[v.GetField()] = v.GetDescription()
			}
		}
	}
	if info == nil || info.GetReason() == "" || info.GetDomain() != errDomain {
		t.Fatalf("ErrorInfo: %v", info)
	}
	if _, ok := violations["model_id"]; !ok {
		t.Fatalf("BadRequest field violations %v lack model_id", violations)
	}
	t.Logf("rich error: reason %s, field violations %v", info.GetReason(), violations)
}
