package dev.streamgate.client;

import dev.streamgate.v1.Chunk;
import dev.streamgate.v1.Completion;
import dev.streamgate.v1.GenerateRequest;
import dev.streamgate.v1.GenerateResponse;
import dev.streamgate.v1.GetMetricsRequest;
import dev.streamgate.v1.GetMetricsResponse;
import dev.streamgate.v1.StreamGateServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.Iterator;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;

/**
 * A small convenience over the generated stubs: one channel, a blocking {@link #generate} that hands
 * each chunk to a callback and returns the final {@link Completion}, and {@link #metrics}. For async
 * streaming and cancellation use {@link #asyncStub()} (see the README).
 */
public final class StreamGateClient implements AutoCloseable {
  private final ManagedChannel channel;
  private final boolean ownsChannel;

  /** Wraps a channel the caller owns (and closes). */
  public StreamGateClient(ManagedChannel channel) {
    this(channel, false);
  }

  private StreamGateClient(ManagedChannel channel, boolean ownsChannel) {
    this.channel = channel;
    this.ownsChannel = ownsChannel;
  }

  /** Connects to a core without TLS, e.g. {@code "127.0.0.1:50051"}; {@link #close} closes the channel. */
  public static StreamGateClient connectPlaintext(String target) {
    return new StreamGateClient(ManagedChannelBuilder.forTarget(target).usePlaintext().build(), true);
  }

  public ManagedChannel channel() {
    return channel;
  }

  public StreamGateServiceGrpc.StreamGateServiceBlockingStub blockingStub() {
    return StreamGateServiceGrpc.newBlockingStub(channel);
  }

  public StreamGateServiceGrpc.StreamGateServiceStub asyncStub() {
    return StreamGateServiceGrpc.newStub(channel);
  }

  /** Streams a single user message on the server's default model. */
  public Completion generate(String query, Consumer<Chunk> onChunk) {
    return generate(GenerateRequest.newBuilder().setQuery(query).build(), null, onChunk);
  }

  /**
   * Streams a request: each chunk goes to {@code onChunk} as it arrives, in order; returns the final
   * Completion. A refused or failed stream throws {@link StreamGateException} (with the server's final
   * Error message when the stream had started). {@code deadline} may be null.
   */
  public Completion generate(GenerateRequest request, Duration deadline, Consumer<Chunk> onChunk) {
    StreamGateServiceGrpc.StreamGateServiceBlockingStub stub = blockingStub();
    if (deadline != null) {
      stub = stub.withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
    }
    Completion completion = null;
    dev.streamgate.v1.Error error = null;
    try {
      Iterator<GenerateResponse> responses = stub.generate(request);
      while (responses.hasNext()) {
        GenerateResponse response = responses.next();
        switch (response.getEventCase()) {
          case CHUNK -> onChunk.accept(response.getChunk());
          case COMPLETION -> completion = response.getCompletion();
          case ERROR -> error = response.getError();
          default -> { } // an event this client does not know yet
        }
      }
    } catch (StatusRuntimeException e) {
      throw new StreamGateException(e, error);
    }
    if (completion == null) {
      throw new IllegalStateException("the stream ended without a final message");
    }
    return completion;
  }

  /** The server's aggregate metrics. */
  public GetMetricsResponse metrics() {
    return blockingStub().getMetrics(GetMetricsRequest.getDefaultInstance());
  }

  @Override
  public void close() {
    if (!ownsChannel) {
      return;
    }
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }
}
