// Command sgload is the scale benchmark's load generator: the fake OpenAI-compatible upstream and the
// closed-loop SSE clients, in one static binary that costs a few microseconds a token, so that on a
// machine where the load runs beside the gateway the gateway gets the CPUs (the Python upstream and
// clients of benchmarks/ cost about 100 µs a token each, as much as the gateway itself).
//
//	sgload upstream --port P --tokens N --delay S --first-token-delay S
//	sgload clients --job JSON
//
// The upstream answers as streamgate.testing.upstream does (the same words, max_tokens, the usage
// chunk, GET /counters). The clients run one job of benchmarks.load (closed loop: each slot opens a
// new stream as soon as its last ended, lengths drawn from a range, only the window recorded) and
// print the job's Result as JSON; benchmarks/device_scale.py reads it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: sgload upstream|clients ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "upstream":
		upstream(os.Args[2:])
	case "clients":
		clients(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "sgload: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

// -- the upstream ------------------------------------------------------------------------------

var words = []string{
	"Streaming", "sends", "each", "token", "to", "the", "client", "as", "soon", "as", "the", "model",
	"produces", "it,", "so", "the", "reader", "sees", "the", "answer", "grow", "instead", "of",
	"waiting", "for", "the", "whole", "of", "it.", "",
}

func token(i int) string {
	if i == 0 {
		return words[0]
	}
	return " " + words[i%len(words)]
}

type counters struct {
	Started     atomic.Int64
	Finished    atomic.Int64
	Disconnects atomic.Int64
	Active      atomic.Int64
	Connections atomic.Int64
}

type chatRequest struct {
	Model               string `json:"model"`
	Stream              bool   `json:"stream"`
	MaxTokens           int    `json:"max_tokens"`
	MaxCompletionTokens int    `json:"max_completion_tokens"`
	StreamOptions       struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Messages []struct {
		Content any `json:"content"`
	} `json:"messages"`
}

func upstream(args []string) {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	port := fs.Int("port", 0, "port on 127.0.0.1")
	tokens := fs.Int("tokens", 100, "tokens per answer (max_tokens asks fewer)")
	delay := fs.Float64("delay", 0, "seconds between tokens")
	first := fs.Float64("first-token-delay", 0, "seconds before the first token")
	_ = fs.Parse(args)
	var c counters
	mux := http.NewServeMux()
	mux.HandleFunc("GET /counters", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"started":%d,"finished":%d,"disconnects":%d,"active":%d,"connections":%d}`,
			c.Started.Load(), c.Finished.Load(), c.Disconnects.Load(), c.Active.Load(), c.Connections.Load())
	})
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		var body chatRequest
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, `{"error":{"message":"not JSON","type":"fake"}}`, http.StatusBadRequest)
			return
		}
		c.Started.Add(1)
		c.Active.Add(1)
		defer c.Active.Add(-1)
		if answer(w, r, &body, *tokens, secs(*delay), secs(*first)) {
			c.Finished.Add(1)
		} else {
			c.Disconnects.Add(1)
		}
	})
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "sgload upstream:", err)
		os.Exit(1)
	}
	server := &http.Server{
		Handler: mux,
		ConnState: func(_ net.Conn, state http.ConnState) {
			if state == http.StateNew {
				c.Connections.Add(1)
			}
		},
	}
	fmt.Printf("upstream listening on http://%s/v1\n", listener.Addr())
	if err := server.Serve(listener); err != nil {
		fmt.Fprintln(os.Stderr, "sgload upstream:", err)
		os.Exit(1)
	}
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// answer streams (or returns) one completion; false when the client went away first.
func answer(w http.ResponseWriter, r *http.Request, body *chatRequest, tokens int, delay, first time.Duration) bool {
	model := body.Model
	if model == "" {
		model = "fake"
	}
	prompt := 0
	for _, m := range body.Messages {
		if s, ok := m.Content.(string); ok {
			prompt += len(strings.Fields(s))
		}
	}
	limit := body.MaxTokens
	if limit == 0 {
		limit = body.MaxCompletionTokens
	}
	count, finish := tokens, "stop"
	if limit > 0 && limit < tokens {
		count, finish = limit, "length"
	}
	usage := fmt.Sprintf(`{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}`, prompt, count, prompt+count)
	modelJSON, _ := json.Marshal(model)
	ctx := r.Context()
	sleep := func(d time.Duration) bool {
		if d <= 0 {
			return true
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !body.Stream {
		if !sleep(first + delay*time.Duration(count)) {
			return false
		}
		var text strings.Builder
		for i := range count {
			text.WriteString(token(i))
		}
		content, _ := json.Marshal(text.String())
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"chatcmpl-fake","object":"chat.completion","created":%d,"model":%s,`+
			`"choices":[{"index":0,"message":{"role":"assistant","content":%s},"finish_reason":"%s"}],"usage":%s}`,
			time.Now().Unix(), modelJSON, content, finish, usage)
		return true
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	flusher := w.(http.Flusher)
	flusher.Flush()
	prefix := `data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":0,"model":` + string(modelJSON)
	send := func(s string) bool {
		if _, err := io.WriteString(w, s); err != nil {
			return false
		}
		flusher.Flush()
		return ctx.Err() == nil
	}
	if !sleep(first) {
		return false
	}
	for i := range count {
		if i > 0 && !sleep(delay) {
			return false
		}
		text, _ := json.Marshal(token(i))
		role := ""
		if i == 0 {
			role = `"role":"assistant",`
		}
		if !send(prefix + `,"choices":[{"index":0,"delta":{` + role + `"content":` + string(text) + `},"finish_reason":null}]}` + "\n\n") {
			return false
		}
	}
	end := prefix + `,"choices":[{"index":0,"delta":{},"finish_reason":"` + finish + `"}]}` + "\n\n"
	if body.StreamOptions.IncludeUsage {
		end += prefix + `,"choices":[],"usage":` + usage + "}\n\n"
	}
	return send(end + "data: [DONE]\n\n")
}

// -- the clients -------------------------------------------------------------------------------

// job is benchmarks.load.Job, as device_scale sends it (closed loop only).
type job struct {
	URL      string            `json:"url"`
	Body     map[string]any    `json:"body"`
	Headers  map[string]string `json:"headers"`
	Dialect  string            `json:"dialect"`
	Streams  int               `json:"streams"`
	StartAt  float64           `json:"start_at"`
	RampS    float64           `json:"ramp_s"`
	LoopS    float64           `json:"loop_s"`
	Lengths  [2]int            `json:"lengths"`
	Window   [2]float64        `json:"window"`
	TimeoutS float64           `json:"timeout_s"`
	Seed     int64             `json:"seed"`
}

// result is benchmarks.load.Result's fields, as JSON.
type result struct {
	Streams      int       `json:"streams"`
	Errors       int       `json:"errors"`
	ErrorSamples []string  `json:"error_samples"`
	Chunks       int       `json:"chunks"`
	Tokens       int       `json:"tokens"`
	TTFTs        []float64 `json:"ttfts"`
	Gaps         []float64 `json:"gaps"`
	BusyS        float64   `json:"busy_s"`
	FirstStart   float64   `json:"first_start"`
	LastEnd      float64   `json:"last_end"`
	CPUS         float64   `json:"cpu_s"`
	Completed    int       `json:"completed"`
	Dropped      int       `json:"dropped"`
	WindowTokens int       `json:"window_tokens"`
	WindowChunks int       `json:"window_chunks"`
	WindowCPUS   float64   `json:"window_cpu_s"`
}

func (r *result) error(message string) {
	r.Errors++
	if len(r.ErrorSamples) < 3 {
		if len(message) > 300 {
			message = message[:300]
		}
		r.ErrorSamples = append(r.ErrorSamples, message)
	}
}

func (r *result) merge(o *result) {
	r.Streams += o.Streams
	r.Errors += o.Errors
	for _, s := range o.ErrorSamples {
		if len(r.ErrorSamples) < 3 {
			r.ErrorSamples = append(r.ErrorSamples, s)
		}
	}
	r.Chunks += o.Chunks
	r.Tokens += o.Tokens
	r.TTFTs = append(r.TTFTs, o.TTFTs...)
	r.Gaps = append(r.Gaps, o.Gaps...)
	r.BusyS += o.BusyS
	r.FirstStart = math.Min(r.FirstStart, o.FirstStart)
	r.LastEnd = math.Max(r.LastEnd, o.LastEnd)
	r.Completed += o.Completed
	r.Dropped += o.Dropped
	r.WindowTokens += o.WindowTokens
	r.WindowChunks += o.WindowChunks
}

func cpuSeconds() float64 {
	var u syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &u)
	return float64(u.Utime.Nano()+u.Stime.Nano()) / 1e9
}

func unix(t float64) time.Time { return time.Unix(0, int64(t*1e9)) }

func unixNow() float64 { return float64(time.Now().UnixNano()) / 1e9 }

// tokensIn counts the fake upstream's tokens in a chunk's text: one word each, all but a stream's
// first after a space (benchmarks.load.tokens_in).
func tokensIn(content string, first bool) int {
	n := strings.Count(content, " ")
	if first && content != "" && content[0] != ' ' {
		n++
	}
	return n
}

type frame struct {
	Content string          `json:"content"`
	IsFinal bool            `json:"is_final"`
	Error   json.RawMessage `json:"error"`
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
}

var errStreamFailed = errors.New("stream failed")

type client struct {
	job          *job
	http         *http.Client
	lo, hi       time.Time
	body         map[string]any
	headers      map[string]string
	openaiFrames bool
}

// stream runs one stream; it returns done (the final event came) and records into res.
func (c *client) stream(ctx context.Context, res *result, tokens int) (bool, int, error) {
	body := make(map[string]any, len(c.body)+1)
	for k, v := range c.body {
		body[k] = v
	}
	body["max_tokens"] = tokens
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.job.URL, bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range c.headers {
		req.Header.Set(k, v)
	}
	t0 := time.Now()
	response, err := c.http.Do(req)
	if err != nil {
		return false, 0, err
	}
	defer response.Body.Close()
	if response.StatusCode != http.StatusOK {
		text, _ := io.ReadAll(io.LimitReader(response.Body, 200))
		return false, 0, fmt.Errorf("HTTP %d: %s", response.StatusCode, text)
	}
	reader := bufio.NewReaderSize(response.Body, 16*1024)
	chunks, got := 0, 0
	var last time.Time
	defer func() {
		res.Chunks += chunks
		res.Tokens += got
		end := last
		if end.IsZero() {
			end = time.Now()
		}
		res.BusyS += end.Sub(t0).Seconds()
	}()
	for {
		line, err := reader.ReadSlice('\n')
		if err != nil {
			if ctx.Err() != nil {
				return false, got, ctx.Err()
			}
			return false, got, fmt.Errorf("%w: the stream ended without its final event (%v)", errStreamFailed, err)
		}
		if !bytes.HasPrefix(line, []byte("data:")) {
			continue
		}
		now := time.Now()
		data := bytes.TrimSpace(line[5:])
		var content string
		if c.openaiFrames {
			if string(data) == "[DONE]" {
				drain(reader)
				return true, got, nil
			}
			var f frame
			if err := json.Unmarshal(data, &f); err != nil {
				return false, got, fmt.Errorf("%w: %v", errStreamFailed, err)
			}
			if len(f.Error) > 0 && string(f.Error) != "null" {
				return false, got, fmt.Errorf("%w: error event: %s", errStreamFailed, f.Error)
			}
			if len(f.Choices) == 0 || f.Choices[0].Delta.Content == "" {
				continue
			}
			content = f.Choices[0].Delta.Content
		} else {
			var f frame
			if err := json.Unmarshal(data, &f); err != nil {
				return false, got, fmt.Errorf("%w: %v", errStreamFailed, err)
			}
			if f.IsFinal {
				if len(f.Error) > 0 && string(f.Error) != "null" {
					return false, got, fmt.Errorf("%w: final frame: %s", errStreamFailed, f.Error)
				}
				drain(reader)
				return true, got, nil
			}
			content = f.Content
		}
		n := tokensIn(content, got == 0)
		if !now.Before(c.lo) && now.Before(c.hi) {
			if chunks > 0 {
				res.Gaps = append(res.Gaps, now.Sub(last).Seconds())
			} else if !t0.Before(c.lo) {
				res.TTFTs = append(res.TTFTs, now.Sub(t0).Seconds())
			}
			res.WindowTokens += n
			res.WindowChunks++
		}
		last = now
		chunks++
		got += n
	}
}

// drain reads the body's end (the server ends it right after the final event), so that its
// connection is kept for the slot's next stream, as a browser's or an SDK's would be.
func drain(reader *bufio.Reader) {
	_, _ = io.Copy(io.Discard, io.LimitReader(reader, 64*1024))
}

// slot is one closed-loop client: a new stream as soon as the last ended, until the loop's end.
func (c *client) slot(ctx context.Context, index int, res *result) {
	j := c.job
	lengths := rand.New(rand.NewSource(j.Seed*1_000_003 + int64(index)))
	end := unix(j.StartAt + j.LoopS)
	select {
	case <-time.After(time.Until(unix(j.StartAt + j.RampS*float64(index)/float64(j.Streams)))):
	case <-ctx.Done():
		return
	}
	for time.Now().Before(end) {
		tokens := lengths.Intn(j.Lengths[1]-j.Lengths[0]+1) + j.Lengths[0]
		res.Streams++
		errorsBefore := res.Errors
		res.FirstStart = math.Min(res.FirstStart, unixNow())
		streamCtx, cancel := context.WithTimeout(ctx, secs(j.TimeoutS))
		done, got, err := c.stream(streamCtx, res, tokens)
		timedOut := errors.Is(streamCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		cancel()
		res.LastEnd = math.Max(res.LastEnd, unixNow())
		switch {
		case ctx.Err() != nil:
			res.Dropped++ // the end of the loop: dropped open, not an error
			return
		case done:
			res.Completed++
			if got != tokens {
				res.error(fmt.Sprintf("%d tokens, expected %d", got, tokens))
			}
		case timedOut:
			res.error(fmt.Sprintf("no end within %.0f s (%d tokens)", j.TimeoutS, got))
		default:
			res.error(strings.Replace(err.Error(), errStreamFailed.Error()+": ", "StreamFailed: ", 1))
		}
		if res.Errors > errorsBefore {
			time.Sleep(100 * time.Millisecond) // a failure may be at once: no busy loop of refusals
		}
	}
}

func clients(args []string) {
	fs := flag.NewFlagSet("clients", flag.ExitOnError)
	spec := fs.String("job", "", "the job, as JSON")
	_ = fs.Parse(args)
	var j job
	if err := json.Unmarshal([]byte(*spec), &j); err != nil || j.Streams <= 0 || j.LoopS <= 0 {
		fmt.Fprintf(os.Stderr, "sgload clients: a closed-loop job is needed (%v)\n", err)
		os.Exit(2)
	}
	if j.Dialect == "" {
		j.Dialect = "streamgate"
	}
	transport := &http.Transport{
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: j.Streams,
		DisableCompression:  true,
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
	}
	c := &client{
		job: &j, http: &http.Client{Transport: transport},
		lo: unix(j.StartAt + j.Window[0]), hi: unix(j.StartAt + j.Window[1]),
		body: j.Body, headers: j.Headers, openaiFrames: j.Dialect == "openai",
	}
	var windowCPU float64
	var cpuDone sync.WaitGroup
	cpuDone.Add(1)
	go func() {
		defer cpuDone.Done()
		time.Sleep(time.Until(c.lo))
		start := cpuSeconds()
		time.Sleep(time.Until(c.hi))
		windowCPU = cpuSeconds() - start
	}()
	cpu := cpuSeconds()
	ctx, stop := context.WithDeadline(context.Background(), unix(j.StartAt+j.LoopS))
	defer stop()
	results := make([]result, j.Streams)
	var wg sync.WaitGroup
	for i := range j.Streams {
		results[i].FirstStart = math.Inf(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.slot(ctx, i, &results[i])
		}()
	}
	wg.Wait()
	cpuDone.Wait()
	total := result{FirstStart: math.Inf(1), TTFTs: []float64{}, Gaps: []float64{}, ErrorSamples: []string{}}
	for i := range results {
		total.merge(&results[i])
	}
	if math.IsInf(total.FirstStart, 1) {
		total.FirstStart = 0
	}
	total.WindowCPUS = windowCPU
	total.CPUS = cpuSeconds() - cpu
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	if err := json.NewEncoder(out).Encode(total); err != nil {
		fmt.Fprintln(os.Stderr, "sgload clients:", err)
		os.Exit(1)
	}
	_ = out.Flush()
}
