// Package streamgate is a thin Go client for the streamgate core, over the
// buf-generated stubs in package streamgatev1 (which can also be used alone).
//
//	client, err := streamgate.New("127.0.0.1:50051")
//	if err != nil { ... }
//	defer client.Close()
//	completion, err := client.Generate(ctx, &streamgatev1.GenerateRequest{Query: "Hello"},
//		func(chunk *streamgatev1.Chunk) error {
//			fmt.Print(chunk.GetContent())
//			return nil
//		})
//
// A request refused before its stream starts (bad input, over the concurrency
// limit, the deadline, a core that cannot be reached) returns the call's gRPC
// status error. A stream that fails after it started returns a *StreamError,
// which carries the core's final Error message (partial text, usage, metrics).
// Either way status.Code(err) gives the gRPC code. Cancelling ctx cancels the
// call, and the core closes the upstream request.
package streamgate

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/streamgate/streamgate/clients/go/streamgatev1"
)

// Client is one connection to a core; it may run many Generate calls at once.
type Client struct {
	conn *grpc.ClientConn
	// Stub is the generated client, for calls this package does not wrap.
	Stub pb.StreamGateServiceClient
}

// New connects to the core at addr (host:port). Without options it connects
// in plaintext; options given later override earlier ones.
func New(addr string, opts ...grpc.DialOption) (*Client, error) {
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, Stub: pb.NewStreamGateServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// StreamError is a stream that failed after it started: the core sent a final
// Error message and ended the call with a non-OK status.
type StreamError struct {
	// Status is the status the call ended with.
	Status *status.Status
	// Final is the core's final message: code, message, retryable, partial text, usage.
	Final *pb.Error
}

func (e *StreamError) Error() string {
	return fmt.Sprintf("streamgate: stream failed: %s: %s", e.Status.Code(), e.Final.GetMessage())
}

// GRPCStatus lets status.Code and status.FromError see the call's status.
func (e *StreamError) GRPCStatus() *status.Status { return e.Status }

// Generate streams req and calls onChunk (if not nil) with each chunk, in
// order. It returns the final Completion. If onChunk returns an error,
// Generate cancels the call and returns that error.
func (c *Client) Generate(ctx context.Context, req *pb.GenerateRequest, onChunk func(*pb.Chunk) error) (*pb.Completion, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the call (and the upstream request) whenever we return early
	stream, err := c.Stub.Generate(ctx, req)
	if err != nil {
		return nil, err
	}
	var next uint32
	for {
		response, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Internal, "streamgate: the stream ended without a final message")
			}
			return nil, err
		}
		switch event := response.GetEvent().(type) {
		case *pb.GenerateResponse_Chunk:
			if event.Chunk.GetIndex() != next {
				return nil, status.Errorf(codes.Internal, "streamgate: chunk %d arrived where %d was due", event.Chunk.GetIndex(), next)
			}
			next++
			if onChunk != nil {
				if err := onChunk(event.Chunk); err != nil {
					return nil, err
				}
			}
		case *pb.GenerateResponse_Completion:
			// Read the call to its end so its status is OK, as the contract promises.
			if _, err := stream.Recv(); err != nil && !errors.Is(err, io.EOF) {
				return event.Completion, err
			}
			return event.Completion, nil
		case *pb.GenerateResponse_Error:
			_, err := stream.Recv()
			st := status.Convert(err)
			if err == nil || errors.Is(err, io.EOF) {
				st = status.New(codes.Unknown, event.Error.GetMessage())
			}
			return nil, &StreamError{Status: st, Final: event.Error}
		default:
			return nil, status.Error(codes.Internal, "streamgate: a message with no event")
		}
	}
}

// Query streams a single user message on the core's default model.
func (c *Client) Query(ctx context.Context, query string, onChunk func(*pb.Chunk) error) (*pb.Completion, error) {
	return c.Generate(ctx, &pb.GenerateRequest{Query: query}, onChunk)
}

// Metrics returns the core's aggregate metrics.
func (c *Client) Metrics(ctx context.Context) (*pb.GetMetricsResponse, error) {
	return c.Stub.GetMetrics(ctx, &pb.GetMetricsRequest{})
}
