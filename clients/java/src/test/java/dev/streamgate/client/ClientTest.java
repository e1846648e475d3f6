package dev.streamgate.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.streamgate.v1.Chunk;
import dev.streamgate.v1.Completion;
import dev.streamgate.v1.GenerateRequest;
import dev.streamgate.v1.GenerateResponse;
import dev.streamgate.v1.GetMetricsRequest;
import dev.streamgate.v1.StreamGateServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The generated client against a live core (max 2 concurrent streams) in front of the fake upstream. */
@Timeout(value = 30, unit = TimeUnit.SECONDS)
class ClientTest {
  private static final String SLOW = "openai/slow"; // 1000 tokens, 50 ms apart

  private static LiveCore live;
  private static ManagedChannel channel;

  @BeforeAll
  static void startCore() throws Exception {
    live = LiveCore.start(2);
    channel = ManagedChannelBuilder.forTarget(live.core).usePlaintext().build();
  }

  @AfterAll
  static void stopCore() throws Exception {
    if (channel != null) {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
    if (live != null) {
      live.close();
    }
  }

  /** Each test leaves the core with no open stream, so the next one is not over the limit. */
  @AfterEach
  void noOpenStreams() throws InterruptedException {
    var stub = StreamGateServiceGrpc.newBlockingStub(channel);
    long until = System.nanoTime() + Duration.ofSeconds(5).toNanos();
    int active;
    while ((active = stub.getMetrics(GetMetricsRequest.getDefaultInstance()).getActiveStreams()) > 0) {
      if (System.nanoTime() > until) {
        fail(active + " streams still open 5 s after the test");
      }
      Thread.sleep(20);
    }
  }

  private static GenerateRequest request(String model) {
    return GenerateRequest.newBuilder().setQuery("Tell me about streaming").setModel(model).build();
  }

  @Test
  void chunksArriveInOrderAndJoinToTheCompletion() {
    var stub = StreamGateServiceGrpc.newBlockingStub(channel).withDeadlineAfter(10, TimeUnit.SECONDS);
    List<Chunk> chunks = new ArrayList<>();
    List<Completion> finals = new ArrayList<>();
    Iterator<GenerateResponse> responses = stub.generate(GenerateRequest.newBuilder().setQuery("Hello").build());
    while (responses.hasNext()) {
      GenerateResponse response = responses.next();
      switch (response.getEventCase()) {
        case CHUNK -> {
          assertTrue(finals.isEmpty(), "a chunk after the final message");
          chunks.add(response.getChunk());
        }
        case COMPLETION -> finals.add(response.getCompletion());
        default -> fail("unexpected event " + response);
      }
    }
    assertEquals(1, finals.size(), "exactly one final message");
    Completion done = finals.get(0);

    StringBuilder text = new StringBuilder();
    for (int i = 0; i < chunks.size(); i++) {
      assertEquals(i, chunks.get(i).getIndex(), "chunk index");
      text.append(chunks.get(i).getContent());
    }
    assertEquals(done.getText(), text.toString());
    assertFalse(done.getText().isEmpty());
    assertEquals("stop", done.getFinishReason());
    assertFalse(done.getRequestId().isEmpty(), "the server names the request");

    assertTrue(done.hasUsage());
    assertEquals(8, done.getUsage().getCompletionTokens());
    assertTrue(done.getUsage().getPromptTokens() > 0);
    assertEquals(done.getUsage().getPromptTokens() + 8, done.getUsage().getTotalTokens());
    assertTrue(done.hasMetrics());
    assertEquals(8, done.getMetrics().getChunks());
    assertEquals(8, chunks.size());
    assertTrue(done.getMetrics().getTtftMs() > 0, "ttft_ms > 0");
    assertTrue(done.getMetrics().getDurationMs() >= done.getMetrics().getTtftMs());
  }

  @Test
  void wrapperStreamsAndReportsMetrics() {
    var client = new StreamGateClient(channel);
    StringBuilder text = new StringBuilder();
    AtomicInteger next = new AtomicInteger();
    Completion done = client.generate(GenerateRequest.newBuilder().setQuery("Hi").setRequestId("java-wrapper-1").build(),
        Duration.ofSeconds(10), chunk -> {
          assertEquals(next.getAndIncrement(), chunk.getIndex());
          text.append(chunk.getContent());
        });
    assertEquals(done.getText(), text.toString());
    assertEquals("java-wrapper-1", done.getRequestId());
    assertEquals(8, next.get());
    assertTrue(client.metrics().getStreamsStarted() >= 1);
  }

  @Test
  void exampleProgramPrintsChunksThenUsageCostAndMetrics() {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    ByteArrayOutputStream err = new ByteArrayOutputStream();
    int status = Example.run(new String[] {live.core, "Hello, how are you?"},
        new PrintStream(out, true, StandardCharsets.UTF_8), new PrintStream(err, true, StandardCharsets.UTF_8));
    String printed = out.toString(StandardCharsets.UTF_8);
    assertEquals(0, status, err.toString(StandardCharsets.UTF_8));
    assertTrue(printed.contains("completion_tokens=8"), printed);
    assertTrue(printed.contains("cost_usd: "), printed);
    assertTrue(printed.contains("chunks=8"), printed);
    assertTrue(printed.contains("ttft_ms="), printed);
  }

  @Test
  void cancellingTheCallClosesTheUpstreamRequest() throws Exception {
    long disconnectsBefore = live.counter("disconnects");
    AtomicInteger chunks = new AtomicInteger();
    CompletableFuture<Throwable> ended = new CompletableFuture<>();
    StreamGateServiceGrpc.newStub(channel).generate(request(SLOW),
        new ClientResponseObserver<GenerateRequest, GenerateResponse>() {
          private ClientCallStreamObserver<GenerateRequest> call;

          @Override
          public void beforeStart(ClientCallStreamObserver<GenerateRequest> requestStream) {
            call = requestStream;
          }

          @Override
          public void onNext(GenerateResponse response) {
            if (response.hasChunk() && chunks.incrementAndGet() == 3) {
              call.cancel("the test has seen 3 chunks", null);
            }
          }

          @Override
          public void onError(Throwable t) {
            ended.complete(t);
          }

          @Override
          public void onCompleted() {
            ended.complete(null);
          }
        });
    Throwable t = ended.get(10, TimeUnit.SECONDS);
    assertNotNull(t, "a cancelled call ends with an error");
    assertEquals(Status.Code.CANCELLED, Status.fromThrowable(t).getCode());
    assertEquals(3, chunks.get(), "no chunk after the cancel");

    long until = System.nanoTime() + Duration.ofSeconds(2).toNanos();
    while (live.counter("disconnects") <= disconnectsBefore) {
      if (System.nanoTime() > until) {
        fail("the upstream request was not closed within 2 s of the cancel");
      }
      Thread.sleep(20);
    }
  }

  @Test
  void clientDeadlineEndsTheCallWithDeadlineExceeded() {
    var stub = StreamGateServiceGrpc.newBlockingStub(channel).withDeadlineAfter(300, TimeUnit.MILLISECONDS);
    long start = System.nanoTime();
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> {
      Iterator<GenerateResponse> responses = stub.generate(request(SLOW));
      while (responses.hasNext()) {
        responses.next();
      }
    });
    assertEquals(Status.Code.DEADLINE_EXCEEDED, e.getStatus().getCode());
    long elapsedMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
    assertTrue(elapsedMs < 5000, "ended after " + elapsedMs + " ms");

    // The wrapper reports the same.
    StreamGateException wrapped = assertThrows(StreamGateException.class,
        () -> new StreamGateClient(channel).generate(request(SLOW), Duration.ofMillis(300), chunk -> { }));
    assertEquals(Status.Code.DEADLINE_EXCEEDED, wrapped.code());
  }

  @Test
  void aThirdStreamOverTheLimitIsRefusedWithResourceExhausted() throws Exception {
    var async = StreamGateServiceGrpc.newStub(channel);
    List<ClientCallStreamObserver<GenerateRequest>> open = new ArrayList<>();
    try {
      for (int i = 0; i < 2; i++) {
        CompletableFuture<Void> firstChunk = new CompletableFuture<>();
        async.generate(request(SLOW), new ClientResponseObserver<GenerateRequest, GenerateResponse>() {
          @Override
          public void beforeStart(ClientCallStreamObserver<GenerateRequest> requestStream) {
            synchronized (open) {
              open.add(requestStream);
            }
          }

          @Override
          public void onNext(GenerateResponse response) {
            firstChunk.complete(null);
          }

          @Override
          public void onError(Throwable t) {
            firstChunk.completeExceptionally(t);
          }

          @Override
          public void onCompleted() {
            firstChunk.complete(null);
          }
        });
        firstChunk.get(10, TimeUnit.SECONDS); // admitted and streaming
      }
      var blocking = StreamGateServiceGrpc.newBlockingStub(channel).withDeadlineAfter(10, TimeUnit.SECONDS);
      StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> blocking.generate(request(SLOW)).hasNext());
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.getStatus().getCode());

      StreamGateException wrapped = assertThrows(StreamGateException.class,
          () -> new StreamGateClient(channel).generate(request("openai/fast"), Duration.ofSeconds(10), chunk -> { }));
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, wrapped.code());
      assertNull(wrapped.error(), "a refused stream has no final message");
      assertTrue(wrapped.retryable());
    } finally {
      synchronized (open) {
        for (var call : open) {
          call.cancel("test over", null);
        }
      }
    }
  }
}
