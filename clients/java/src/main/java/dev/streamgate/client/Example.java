package dev.streamgate.client;

import dev.streamgate.v1.Completion;
import dev.streamgate.v1.GenerateRequest;
import dev.streamgate.v1.StreamMetrics;
import dev.streamgate.v1.Usage;
import java.io.PrintStream;
import java.util.Locale;

/**
 * Streams a prompt from a streamgate core, printing chunks as they come, then the usage, cost and
 * metrics of the final message.
 *
 * <pre>
 *   mvn -q compile exec:java -Dexec.args="127.0.0.1:50051 'Tell me about streaming'"
 * </pre>
 */
public final class Example {
  private Example() {}

  public static void main(String[] args) {
    System.exit(run(args, System.out, System.err));
  }

  /** Runs the example; returns the process exit status. */
  public static int run(String[] args, PrintStream out, PrintStream err) {
    if (args.length < 1 || args.length > 3) {
      err.println("usage: Example ADDRESS [QUERY [MODEL]]   e.g. Example 127.0.0.1:50051 'Hello, how are you?'");
      return 2;
    }
    String query = args.length > 1 ? args[1] : "Hello, how are you?";
    GenerateRequest.Builder request = GenerateRequest.newBuilder().setQuery(query);
    if (args.length > 2) {
      request.setModel(args[2]);
    }
    try (StreamGateClient client = StreamGateClient.connectPlaintext(args[0])) {
      Completion done = client.generate(request.build(), null, chunk -> {
        out.print(chunk.getContent());
        out.flush();
      });
      out.println();
      Usage usage = done.getUsage();
      StreamMetrics metrics = done.getMetrics();
      out.printf(Locale.ROOT, "model: %s, finish_reason: %s, request_id: %s%n",
          done.getModel(), done.getFinishReason(), done.getRequestId());
      out.printf(Locale.ROOT, "usage: prompt_tokens=%d completion_tokens=%d total_tokens=%d%s%n",
          usage.getPromptTokens(), usage.getCompletionTokens(), usage.getTotalTokens(),
          done.getUsageEstimated() ? " (estimated)" : "");
      out.println("cost_usd: " + (done.hasCostUsd() ? String.format(Locale.ROOT, "%.6f", done.getCostUsd()) : "unknown"));
      out.printf(Locale.ROOT, "metrics: ttft_ms=%.1f duration_ms=%.1f tokens_per_second=%.1f chunks=%d%n",
          metrics.getTtftMs(), metrics.getDurationMs(), metrics.getTokensPerSecond(), metrics.getChunks());
      return 0;
    } catch (StreamGateException e) {
      out.println();
      err.println("error: " + e.getMessage() + (e.retryable() ? " (retryable)" : ""));
      if (e.error() != null) {
        err.println("partial text: " + e.error().getPartialText());
      }
      return 1;
    }
  }
}
