// Command example streams one prompt from a streamgate core and prints the
// chunks as they come, then the final usage, cost and metrics.
//
//	go run ./cmd/example -addr 127.0.0.1:50051 -query "Tell me about streaming"
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"google.golang.org/grpc/status"

	streamgate "github.com/streamgate/streamgate/clients/go"
	pb "github.com/streamgate/streamgate/clients/go/streamgatev1"
)

func main() { os.Exit(mainCode()) }

func mainCode() int {
	addr := flag.String("addr", "127.0.0.1:50051", "the core's gRPC address")
	query := flag.String("query", "Tell me about streaming", "the prompt")
	model := flag.String("model", "", "a litellm model string (empty: the core's default model)")
	timeout := flag.Duration("timeout", 0, "deadline for the whole stream (0: none)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt) // Ctrl-C cancels the stream
	defer stop()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	return run(ctx, *addr, &pb.GenerateRequest{Query: *query, Model: *model})
}

func run(ctx context.Context, addr string, req *pb.GenerateRequest) int {
	client, err := streamgate.New(addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		return 1
	}
	defer client.Close()

	completion, err := client.Generate(ctx, req, func(chunk *pb.Chunk) error {
		fmt.Print(chunk.GetContent())
		return nil
	})
	fmt.Println()
	if err != nil {
		var failed *streamgate.StreamError
		if errors.As(err, &failed) {
			fmt.Fprintf(os.Stderr, "example: the stream failed: %s (retryable: %t)\n",
				failed.Final.GetMessage(), failed.Final.GetRetryable())
			printUsage(os.Stderr, failed.Final.GetUsage(), failed.Final.CostUsd, failed.Final.GetMetrics())
		}
		fmt.Fprintf(os.Stderr, "example: %s: %s\n", status.Code(err), status.Convert(err).Message())
		return 1
	}
	fmt.Printf("finish_reason: %s  model: %s  request_id: %s\n",
		completion.GetFinishReason(), completion.GetModel(), completion.GetRequestId())
	printUsage(os.Stdout, completion.GetUsage(), completion.CostUsd, completion.GetMetrics())
	return 0
}

func printUsage(w io.Writer, usage *pb.Usage, cost *float64, metrics *pb.StreamMetrics) {
	fmt.Fprintf(w, "usage: prompt_tokens=%d completion_tokens=%d total_tokens=%d\n",
		usage.GetPromptTokens(), usage.GetCompletionTokens(), usage.GetTotalTokens())
	if cost != nil {
		fmt.Fprintf(w, "cost: $%.6f\n", *cost)
	} else {
		fmt.Fprintln(w, "cost: unknown (the model is not in litellm's price table)")
	}
	fmt.Fprintf(w, "metrics: ttft=%s duration=%s tokens_per_second=%.1f chunks=%d\n",
		ms(metrics.GetTtftMs()), ms(metrics.GetDurationMs()), metrics.GetTokensPerSecond(), metrics.GetChunks())
}

func ms(v float64) time.Duration {
	return time.Duration(v * float64(time.Millisecond)).Round(10 * time.Microsecond)
}
