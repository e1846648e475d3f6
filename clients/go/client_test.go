package streamgate_test

// The Go client against a live core (python -m streamgate.testing.live) in
// front of the fake upstream: order, final figures, cancel, deadline, limit.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	streamgate "github.com/streamgate/streamgate/clients/go"
	pb "github.com/streamgate/streamgate/clients/go/streamgatev1"
)

// live is what the live core printed on its first line.
var live struct {
	Core     string `json:"core"`
	Upstream string `json:"upstream"`
	Counters string `json:"counters"`
}

// client is shared by the tests; each test leaves the core idle.
var client *streamgate.Client

// lockedBuffer collects the live core's stderr, shown when something fails.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// python finds the repository's .venv/bin/python: $STREAMGATE_PYTHON, or the
// first .venv above this directory that sits beside a pyproject.toml.
func python() (string, error) {
	if p := os.Getenv("STREAMGATE_PYTHON"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		candidate := filepath.Join(dir, ".venv", "bin", "python")
		if _, err := os.Stat(filepath.Join(dir, "pyproject.toml")); err == nil {
			if _, err := os.Stat(candidate); err == nil {
				return candidate, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no .venv/bin/python beside a pyproject.toml above this directory: run scripts/setup, or set STREAMGATE_PYTHON")
		}
		dir = parent
	}
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	py, err := python()
	if err != nil {
		fmt.Fprintln(os.Stderr, "live core:", err)
		return 1
	}
	cmd := exec.Command(py, "-m", "streamgate.testing.live", "--max-concurrent-streams", "2")
	// litellm must not reach the internet for its price table.
	cmd.Env = append(os.Environ(), "LITELLM_LOCAL_MODEL_COST_MAP=True", "LITELLM_OFFLINE_MODE=true", "HF_HUB_OFFLINE=1")
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe() // the live core serves until this closes
	if err != nil {
		fmt.Fprintln(os.Stderr, "live core:", err)
		return 1
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "live core:", err)
		return 1
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "live core:", err)
		return 1
	}
	stopped := make(chan error, 1)
	defer func() {
		stdin.Close()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			fmt.Fprintln(os.Stderr, "live core: still running 10 s after its stdin closed; killing it")
			_ = cmd.Process.Kill()
			<-stopped
		}
	}()

	firstLine := make(chan string, 1)
	go func() {
		reader := bufio.NewReader(stdout)
		line, _ := reader.ReadString('\n')
		firstLine <- line
		_, _ = io.Copy(io.Discard, reader)
		stopped <- cmd.Wait()
	}()
	select {
	case line := <-firstLine:
		if err := json.Unmarshal([]byte(line), &live); err != nil || live.Core == "" || live.Counters == "" {
			fmt.Fprintf(os.Stderr, "live core: a first line that is not the expected JSON: %q\n%s", line, stderr)
			return 1
		}
	case <-time.After(60 * time.Second):
		fmt.Fprintf(os.Stderr, "live core: no first line within 60 s\n%s", stderr)
		return 1
	}

	client, err = streamgate.New(live.Core)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	defer client.Close()
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "live core's stderr:\n%s", stderr)
	}
	return code
}

// counters are the fake upstream's request counters.
type counters struct {
	Started     int `json:"started"`
	Finished    int `json:"finished"`
	Disconnects int `json:"disconnects"`
	Active      int `json:"active"`
}

func getCounters(t *testing.T) counters {
	t.Helper()
	response, err := http.Get(live.Counters)
	if err != nil {
		t.Fatalf("counters: %v", err)
	}
	defer response.Body.Close()
	var c counters
	if err := json.NewDecoder(response.Body).Decode(&c); err != nil {
		t.Fatalf("counters: %v", err)
	}
	return c
}

// eventually polls cond every 10 ms; it fails the test after within.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// waitIdle waits until the core has no open stream and the upstream no open request.
func waitIdle(t *testing.T) {
	t.Helper()
	eventually(t, 5*time.Second, "the core and the upstream are idle", func() bool {
		m, err := client.Metrics(context.Background())
		if err != nil {
			t.Fatalf("GetMetrics: %v", err)
		}
		return m.GetActiveStreams() == 0 && getCounters(t).Active == 0
	})
}

// read is one whole call read with the generated stub.
type read struct {
	header metadata.MD
	chunks []*pb.Chunk
	final  *pb.GenerateResponse
	err    error // nil when the call ended OK
}

func (r read) text() string {
	var b strings.Builder
	for _, c := range r.chunks {
		b.WriteString(c.GetContent())
	}
	return b.String()
}

// readAll reads a call to its end; it fails the test if anything follows the final message.
func readAll(ctx context.Context, t *testing.T, req *pb.GenerateRequest) read {
	t.Helper()
	var r read
	stream, err := client.Stub.Generate(ctx, req)
	if err != nil {
		r.err = err
		return r
	}
	for {
		response, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				r.err = err
			}
			r.header, _ = stream.Header()
			return r
		}
		if r.final != nil {
			t.Fatalf("a message after the final one: %v", response)
		}
		if chunk := response.GetChunk(); chunk != nil {
			r.chunks = append(r.chunks, chunk)
		} else {
			r.final = response
		}
	}
}

func TestChunksArriveInOrderAndJoinToTheFinalText(t *testing.T) {
	r := readAll(context.Background(), t, &pb.GenerateRequest{Query: "hi there"})
	if r.err != nil {
		t.Fatalf("the call failed: %v", r.err)
	}
	if len(r.chunks) != 8 {
		t.Fatalf("%d chunks, want 8", len(r.chunks))
	}
	for i, c := range r.chunks {
		if c.GetIndex() != uint32(i) {
			t.Errorf("chunk %d has index %d", i, c.GetIndex())
		}
	}
	completion := r.final.GetCompletion()
	if completion == nil {
		t.Fatalf("the final message is not a completion: %v", r.final)
	}
	if completion.GetText() != r.text() || r.text() == "" {
		t.Errorf("the completion text %q is not the chunks joined %q", completion.GetText(), r.text())
	}
	if completion.GetFinishReason() != "stop" {
		t.Errorf("finish_reason %q, want stop", completion.GetFinishReason())
	}
	if ids := r.header.Get("x-request-id"); len(ids) != 1 || ids[0] != completion.GetRequestId() {
		t.Errorf("x-request-id %v, want [%s]", ids, completion.GetRequestId())
	}
}

func TestTheFinalMessageHasUsageAndMetrics(t *testing.T) {
	var chunks []string
	completion, err := client.Generate(context.Background(), &pb.GenerateRequest{Query: "hi there", RequestId: "go-1"},
		func(c *pb.Chunk) error {
			chunks = append(chunks, c.GetContent())
			return nil
		})
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	usage, metrics := completion.GetUsage(), completion.GetMetrics()
	if usage.GetCompletionTokens() != 8 || usage.GetPromptTokens() == 0 ||
		usage.GetTotalTokens() != usage.GetPromptTokens()+usage.GetCompletionTokens() {
		t.Errorf("usage %v, want 8 completion tokens and a total", usage)
	}
	if metrics.GetChunks() != 8 || metrics.GetTtftMs() <= 0 || metrics.GetDurationMs() < metrics.GetTtftMs() {
		t.Errorf("metrics %v, want 8 chunks, ttft > 0, duration >= ttft", metrics)
	}
	if completion.GetText() != strings.Join(chunks, "") {
		t.Errorf("text %q, chunks %q", completion.GetText(), chunks)
	}
	if completion.GetRequestId() != "go-1" || completion.GetModel() == "" {
		t.Errorf("request_id %q model %q", completion.GetRequestId(), completion.GetModel())
	}
	m, err := client.Metrics(context.Background())
	if err != nil {
		t.Fatalf("GetMetrics: %v", err)
	}
	if m.GetStreamsStarted() == 0 || m.GetCompletionTokens() < 8 {
		t.Errorf("aggregate metrics %v", m)
	}
}

func TestCancellingTheCallClosesTheUpstreamRequest(t *testing.T) {
	waitIdle(t)
	before := getCounters(t).Disconnects
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := client.Stub.Generate(ctx, &pb.GenerateRequest{Query: "hi", Model: "openai/slow"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		response, err := stream.Recv()
		if err != nil || response.GetChunk() == nil {
			t.Fatalf("message %d: %v %v", i, response, err)
		}
	}
	cancel()
	took := eventually(t, 2*time.Second, "the upstream saw the disconnect", func() bool {
		return getCounters(t).Disconnects > before
	})
	t.Logf("the upstream request closed %s after the cancel", took)
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("Recv after cancel: %v, want Canceled", err)
	}
	waitIdle(t)
}

func TestReturningAnErrorFromOnChunkCancels(t *testing.T) {
	waitIdle(t)
	before := getCounters(t).Disconnects
	stop := errors.New("enough")
	received := 0
	_, err := client.Generate(context.Background(), &pb.GenerateRequest{Query: "hi", Model: "openai/slow"},
		func(*pb.Chunk) error {
			received++
			if received == 3 {
				return stop
			}
			return nil
		})
	if !errors.Is(err, stop) {
		t.Fatalf("Generate: %v, want the callback's error", err)
	}
	eventually(t, 2*time.Second, "the upstream saw the disconnect", func() bool {
		return getCounters(t).Disconnects > before
	})
	waitIdle(t)
}

func TestADeadlineEndsTheCallWithDeadlineExceeded(t *testing.T) {
	waitIdle(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := readAll(ctx, t, &pb.GenerateRequest{Query: "hi", Model: "openai/slow"})
	if status.Code(r.err) != codes.DeadlineExceeded {
		t.Fatalf("the call ended with %v, want DeadlineExceeded", r.err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the call took %s", took)
	}
	// The core ends the stream just before the deadline, so its final Error
	// usually arrives; the client's own deadline may still win the race.
	if r.final != nil {
		e := r.final.GetError()
		if e == nil || e.GetCode() != pb.ErrorCode_ERROR_CODE_DEADLINE_EXCEEDED {
			t.Errorf("the final message %v, want an Error with DEADLINE_EXCEEDED", r.final)
		}
		if e.GetPartialText() != r.text() {
			t.Errorf("partial text %q, chunks %q", e.GetPartialText(), r.text())
		}
	} else {
		t.Log("the client's deadline ended the call before the core's final Error arrived")
	}

	// The wrapper reports the same code.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if _, err := client.Generate(ctx2, &pb.GenerateRequest{Query: "hi", Model: "openai/slow"}, nil); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("Generate: %v, want DeadlineExceeded", err)
	}
	waitIdle(t)
}

func TestTheConcurrencyLimitGivesResourceExhausted(t *testing.T) {
	waitIdle(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		waitIdle(t)
	}()
	for i := 0; i < 2; i++ {
		stream, err := client.Stub.Generate(ctx, &pb.GenerateRequest{Query: "hi", Model: "openai/slow"})
		if err != nil {
			t.Fatal(err)
		}
		if response, err := stream.Recv(); err != nil || response.GetChunk() == nil { // admitted and streaming
			t.Fatalf("stream %d: %v %v", i, response, err)
		}
	}
	r := readAll(context.Background(), t, &pb.GenerateRequest{Query: "one too many", Model: "openai/slow"})
	if status.Code(r.err) != codes.ResourceExhausted {
		t.Fatalf("the third call ended with %v, want ResourceExhausted", r.err)
	}
	if len(r.chunks) != 0 || r.final != nil {
		t.Errorf("a refused call sent messages: %v %v", r.chunks, r.final)
	}
	if _, err := client.Query(context.Background(), "also too many", nil); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("Query: %v, want ResourceExhausted", err)
	}
}

func TestAnUnknownModelIsInvalidArgument(t *testing.T) {
	_, err := client.Generate(context.Background(), &pb.GenerateRequest{Query: "hi", Model: "no-such-provider/x"}, nil)
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("Generate: %v, want InvalidArgument", err)
	}
	_, err = client.Generate(context.Background(), &pb.GenerateRequest{}, nil)
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("an empty request: %v, want InvalidArgument", err)
	}
}

func TestTheExampleStreamsAndPrintsTheFigures(t *testing.T) {
	binary := filepath.Join(t.TempDir(), "example")
	if out, err := exec.Command("go", "build", "-o", binary, "./cmd/example").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/example: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, "-addr", live.Core, "-query", "hi there", "-model", "openai/fast")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("example: %v\n%s%s", err, &stdout, &stderr)
	}
	want, err := client.Query(context.Background(), "hi there", nil)
	if err != nil {
		t.Fatal(err)
	}
	out := stdout.String()
	for _, part := range []string{
		want.GetText() + "\n",
		"finish_reason: stop",
		"usage: prompt_tokens=",
		"completion_tokens=8",
		"cost: ",
		"metrics: ttft=",
		"chunks=8",
	} {
		if !strings.Contains(out, part) {
			t.Errorf("the example's output lacks %q:\n%s", part, out)
		}
	}

	// A failure exits 1 and names the code.
	cmd = exec.CommandContext(ctx, binary, "-addr", live.Core, "-model", "openai/slow", "-timeout", "300ms")
	stderr.Reset()
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil || !strings.Contains(stderr.String(), "DeadlineExceeded") {
		t.Errorf("example with a deadline: %v\n%s", err, &stderr)
	}
	waitIdle(t)
}
