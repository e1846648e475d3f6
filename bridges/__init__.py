"""streamgate's bridges: SSE and WebSocket for browsers over the core's gRPC stream. HTTP only."""
