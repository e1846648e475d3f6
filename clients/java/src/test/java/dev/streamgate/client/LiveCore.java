package dev.streamgate.client;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A live core in front of the fake upstream: {@code .venv/bin/python -m streamgate.testing.live}.
 * It prints one JSON line with its addresses and serves until its stdin closes.
 */
final class LiveCore implements AutoCloseable {
  private static final Duration START_TIMEOUT = Duration.ofSeconds(60);

  final String core;
  final URI counters;
  private final Process process;
  private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(2)).build();

  private LiveCore(Process process, String core, URI counters) {
    this.process = process;
    this.core = core;
    this.counters = counters;
  }

  /** The repository root: -Dstreamgate.root (set by pom.xml), else the first folder up with .venv and proto. */
  static Path repoRoot() {
    String property = System.getProperty("streamgate.root");
    if (property != null && !property.isEmpty()) {
      return Path.of(property).toAbsolutePath().normalize();
    }
    for (Path dir = Path.of("").toAbsolutePath(); dir != null; dir = dir.getParent()) {
      if (Files.isDirectory(dir.resolve("proto/streamgate")) && Files.exists(dir.resolve(".venv/bin/python"))) {
        return dir;
      }
    }
    throw new IllegalStateException("no repository root with .venv/bin/python above " + Path.of("").toAbsolutePath());
  }

  static LiveCore start(int maxConcurrentStreams) throws IOException, InterruptedException {
    Path root = repoRoot();
    Path python = root.resolve(".venv/bin/python");
    if (!Files.isExecutable(python)) {
      throw new IllegalStateException(python + " is missing: run scripts/setup at the repository root");
    }
    Path log = Path.of("target", "live-core.log").toAbsolutePath();
    Files.createDirectories(log.getParent());
    ProcessBuilder builder = new ProcessBuilder(List.of(python.toString(), "-m", "streamgate.testing.live",
        "--max-concurrent-streams", Integer.toString(maxConcurrentStreams)))
        .directory(root.toFile())
        .redirectError(ProcessBuilder.Redirect.appendTo(log.toFile()));
    // As scripts/test runs the Python tests: litellm offline, with its bundled price table.
    builder.environment().put("LITELLM_LOCAL_MODEL_COST_MAP", "True");
    builder.environment().put("LITELLM_OFFLINE_MODE", "true");
    builder.environment().put("HF_HUB_OFFLINE", "1");
    builder.environment().put("PYTHONUNBUFFERED", "1");
    Process process = builder.start();
    BufferedReader stdout = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
    String line;
    try {
      line = CompletableFuture.supplyAsync(() -> {
        try {
          return stdout.readLine();
        } catch (IOException e) {
          return null;
        }
      }).get(START_TIMEOUT.toSeconds(), TimeUnit.SECONDS);
    } catch (Exception e) {
      process.destroyForcibly();
      throw new IllegalStateException("the live core printed no address within " + START_TIMEOUT + " (see " + log + ")", e);
    }
    if (line == null) {
      process.destroyForcibly();
      throw new IllegalStateException("the live core exited before it printed its address (see " + log + ")");
    }
    Thread drain = new Thread(() -> {
      try {
        while (stdout.readLine() != null) {
          // nothing else is expected on stdout; keep the pipe from filling up
        }
      } catch (IOException ignored) {
        // the core is gone
      }
    }, "live-core-stdout");
    drain.setDaemon(true);
    drain.start();
    return new LiveCore(process, jsonString(line, "core"), URI.create(jsonString(line, "counters")));
  }

  /** The string value of a top-level key of a flat JSON object. */
  static String jsonString(String json, String key) {
    Matcher m = Pattern.compile("\"" + Pattern.quote(key) + "\"\\s*:\\s*\"([^\"]*)\"").matcher(json);
    if (!m.find()) {
      throw new IllegalArgumentException("no \"" + key + "\" in " + json);
    }
    return m.group(1);
  }

  /** The integer value of a top-level key of a flat JSON object. */
  static long jsonLong(String json, String key) {
    Matcher m = Pattern.compile("\"" + Pattern.quote(key) + "\"\\s*:\\s*(-?\\d+)").matcher(json);
    if (!m.find()) {
      throw new IllegalArgumentException("no \"" + key + "\" in " + json);
    }
    return Long.parseLong(m.group(1));
  }

  /** One counter of the fake upstream: started, finished, disconnects or active. */
  long counter(String name) throws IOException, InterruptedException {
    HttpResponse<String> response = http.send(
        HttpRequest.newBuilder(counters).timeout(Duration.ofSeconds(2)).GET().build(),
        HttpResponse.BodyHandlers.ofString());
    if (response.statusCode() != 200) {
      throw new IOException("GET " + counters + ": " + response.statusCode());
    }
    return jsonLong(response.body(), name);
  }

  /** Closes the core's stdin, which stops it, and waits for it to exit. */
  @Override
  public void close() throws IOException, InterruptedException {
    try {
      process.getOutputStream().close();
    } catch (IOException ignored) {
      // already gone
    }
    if (!process.waitFor(10, TimeUnit.SECONDS)) {
      process.destroy();
      if (!process.waitFor(5, TimeUnit.SECONDS)) {
        process.destroyForcibly().waitFor();
      }
    }
  }
}
