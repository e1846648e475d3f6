/**
 * The TypeScript client against a live core: `python -m streamgate.testing.live` runs the real gRPC
 * core in front of the fake OpenAI-compatible upstream, on 127.0.0.1. Nothing is mocked.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { once } from "node:events";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { Http2SessionManager } from "@connectrpc/connect-node";
import {
  Code,
  ConnectError,
  coreBaseUrl,
  createStreamgateClient,
  ErrorCode,
  type Chunk,
  type Error as StreamError,
  type GenerateRequestInit,
  type GenerateResponse,
  type StreamgateClient,
} from "../src/index.js";

/** clients/ts: the nearest folder above this file whose package.json is @streamgate/client. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, "package.json");
    if (existsSync(manifest) && JSON.parse(readFileSync(manifest, "utf8")).name === "@streamgate/client") {
      return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the @streamgate/client package root");
    dir = parent;
  }
}

const PACKAGE_ROOT = packageRoot();
const REPO_ROOT = resolve(PACKAGE_ROOT, "..", "..");
const PYTHON = process.env.STREAMGATE_PYTHON ?? join(REPO_ROOT, ".venv", "bin", "python");
const SLOW: GenerateRequestInit = {
  query: "Tell me about streaming",
  model: "openai/slow",
};

interface Live {
  core: string;
  upstream: string;
  counters: string;
}

interface Counters {
  started: number;
  finished: number;
  disconnects: number;
  active: number;
}

let child: ChildProcessWithoutNullStreams | undefined;
let childStderr = "";
let live: Live;
let sessionManager: Http2SessionManager | undefined;
let client: StreamgateClient;

/** The first stdout line of the live process, or an error with its stderr if it dies or stalls. */
function firstLine(proc: ChildProcessWithoutNullStreams, timeoutMs: number): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    // The reader stays open after the first line, so whatever else is printed is drained.
    const lines = createInterface({ input: proc.stdout });
    const finish = (): void => {
      clearTimeout(timer);
      lines.off("line", onLine);
      proc.off("exit", onExit);
    };
    const onLine = (line: string): void => {
      finish();
      resolvePromise(line);
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      finish();
      reject(new Error(`live core exited (${code ?? signal}) before it was ready:\n${childStderr}`));
    };
    const timer = setTimeout(() => {
      finish();
      reject(new Error(`live core printed nothing in ${timeoutMs} ms:\n${childStderr}`));
    }, timeoutMs);
    lines.on("line", onLine);
    proc.on("exit", onExit);
  });
}

before(
  async () => {
    assert.ok(existsSync(PYTHON), `${PYTHON} is missing: set up the Python environment first (scripts/setup)`);
    const proc = spawn(PYTHON, ["-m", "streamgate.testing.live", "--max-concurrent-streams", "2"], {
      cwd: REPO_ROOT,
      stdio: ["pipe", "pipe", "pipe"],
      env: {
        ...process.env,
        LITELLM_LOCAL_MODEL_COST_MAP: "True",
        LITELLM_OFFLINE_MODE: "true",
        HF_HUB_OFFLINE: "1",
      },
    });
    child = proc;
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (data: string) => {
      childStderr = (childStderr + data).slice(-20_000);
    });
    live = JSON.parse(await firstLine(proc, 60_000)) as Live;
    assert.match(live.core, /^127\.0\.0\.1:\d+$/);
    sessionManager = new Http2SessionManager(coreBaseUrl(live.core));
    client = createStreamgateClient(live.core, { sessionManager });
  },
  { timeout: 70_000 },
);

after(async () => {
  sessionManager?.abort();
  const proc = child;
  if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = once(proc, "exit");
  proc.stdin.end(); // the live process stops when its stdin closes
  const kill = setTimeout(() => proc.kill("SIGTERM"), 10_000);
  const [code, signal] = (await exited) as [number | null, NodeJS.Signals | null];
  clearTimeout(kill);
  assert.equal(code, 0, `live core ended with ${code ?? signal} after stdin closed:\n${childStderr}`);
});

async function counters(): Promise<Counters> {
  const response = await fetch(live.counters);
  assert.equal(response.status, 200);
  return (await response.json()) as Counters;
}

async function waitFor(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<number> {
  const start = performance.now();
  for (;;) {
    if (await check()) return performance.now() - start;
    if (performance.now() - start > timeoutMs) assert.fail(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Wait until no stream is open, in the core and upstream, so one test's tail cannot leak into the next. */
async function settle(): Promise<void> {
  await waitFor("streams settle", 5_000, async () => {
    const [metrics, upstream] = await Promise.all([client.getMetrics({}), counters()]);
    return metrics.activeStreams === 0 && upstream.active === 0;
  });
}

async function collect(request: GenerateRequestInit): Promise<GenerateResponse[]> {
  const responses: GenerateResponse[] = [];
  for await (const response of client.generate(request)) responses.push(response);
  return responses;
}

function isCode(code: Code): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${Code[code]}, got ${Code[err.code]}: ${err.rawMessage}`);
    return true;
  };
}

test("chunks arrive in order and join to the final completion text", { timeout: 15_000 }, async () => {
  const responses = await collect({ query: "Hello, how are you?" });
  const final = responses.at(-1);
  assert.equal(final?.event.case, "completion", "the stream ends with exactly one completion");
  const chunks: Chunk[] = responses.slice(0, -1).map((response) => {
    assert.equal(response.event.case, "chunk", "only chunks come before the final message");
    return response.event.value;
  });
  assert.ok(chunks.length > 0);
  assert.deepEqual(
    chunks.map((chunk) => chunk.index),
    chunks.map((_, i) => i),
  );
  assert.equal(chunks.map((chunk) => chunk.content).join(""), final.event.value.text);
  assert.ok(final.event.value.text.length > 0);
});

test("the final message has usage, metrics and the request id", { timeout: 15_000 }, async () => {
  const headers: Headers[] = [];
  const responses: GenerateResponse[] = [];
  for await (const response of client.generate(
    { query: "Hello", requestId: "ts-client-usage" },
    { onHeader: (header) => headers.push(header) },
  )) {
    responses.push(response);
  }
  const final = responses.at(-1)?.event;
  assert.equal(final?.case, "completion");
  const completion = final.value;
  assert.equal(completion.finishReason, "stop");
  assert.equal(completion.requestId, "ts-client-usage");
  assert.equal(headers[0]?.get("x-request-id"), "ts-client-usage");
  assert.ok(completion.usage, "usage is set");
  assert.equal(completion.usage.completionTokens, 8);
  assert.ok(completion.usage.promptTokens > 0);
  assert.equal(completion.usage.totalTokens, completion.usage.promptTokens + completion.usage.completionTokens);
  assert.ok(completion.metrics, "metrics are set");
  assert.equal(completion.metrics.chunks, 8);
  assert.ok(completion.metrics.ttftMs > 0, `ttft ${completion.metrics.ttftMs} ms`);
  assert.ok(completion.metrics.durationMs >= completion.metrics.ttftMs);
  assert.ok(completion.costUsd === undefined || completion.costUsd >= 0);
});

test("a cancelled call ends the upstream request", { timeout: 15_000 }, async () => {
  await settle();
  const disconnectsBefore = (await counters()).disconnects;
  const controller = new AbortController();
  let chunks = 0;
  await assert.rejects(async () => {
    for await (const response of client.generate(SLOW, { signal: controller.signal })) {
      if (response.event.case === "chunk" && ++chunks === 3) controller.abort();
    }
  }, isCode(Code.Canceled));
  assert.equal(chunks, 3);
  const elapsed = await waitFor("the upstream sees the disconnect", 2_000, async () => {
    return (await counters()).disconnects > disconnectsBefore;
  });
  assert.equal((await counters()).disconnects, disconnectsBefore + 1);
  assert.ok(elapsed < 2_000, `disconnect after ${elapsed.toFixed(0)} ms`);
});

test("a deadline gives DEADLINE_EXCEEDED", { timeout: 15_000 }, async () => {
  await settle();
  const start = performance.now();
  const texts: string[] = [];
  let failure: StreamError | undefined;
  await assert.rejects(async () => {
    for await (const response of client.generate(SLOW, { timeoutMs: 300 })) {
      if (response.event.case === "chunk") texts.push(response.event.value.content);
      if (response.event.case === "error") failure = response.event.value;
    }
  }, isCode(Code.DeadlineExceeded));
  const elapsed = performance.now() - start;
  assert.ok(texts.length > 0, "the stream had started before the deadline");
  // The core ends the stream a little (50 ms) before the client's deadline.
  assert.ok(elapsed >= 200 && elapsed < 3_000, `ended after ${elapsed.toFixed(0)} ms`);
  // Its final Error message (with the partial text) usually beats the client's own timer to it.
  if (failure !== undefined) {
    assert.equal(failure.code, ErrorCode.DEADLINE_EXCEEDED);
    assert.equal(failure.partialText, texts.join(""));
  }
});

test("over the concurrency limit gives RESOURCE_EXHAUSTED", { timeout: 15_000 }, async () => {
  await settle();
  const rejectedBefore = (await client.getMetrics({})).streamsRejected;
  const controllers = [new AbortController(), new AbortController()];
  const open = controllers.map((controller) =>
    client.generate(SLOW, { signal: controller.signal })[Symbol.asyncIterator](),
  );
  try {
    // Both streams are admitted and streaming: each has sent its first chunk.
    for (const result of await Promise.all(open.map((stream) => stream.next()))) {
      assert.equal(result.done, false);
      assert.equal(result.value.event.case, "chunk");
    }
    await assert.rejects(() => collect(SLOW), isCode(Code.ResourceExhausted));
    assert.equal((await client.getMetrics({})).streamsRejected, rejectedBefore + 1n);
  } finally {
    for (const controller of controllers) controller.abort();
    await Promise.all(open.map((stream) => stream.return?.().catch(() => undefined)));
  }
  await settle(); // the slots free again
  const responses = await collect({ query: "again" });
  assert.equal(responses.at(-1)?.event.case, "completion");
});

test("the example program streams a prompt and prints usage, cost and metrics", { timeout: 20_000 }, async () => {
  const example = spawn(process.execPath, [join(PACKAGE_ROOT, "dist", "src", "example.js"), live.core, "Hello"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  example.stdout.setEncoding("utf8").on("data", (data: string) => (stdout += data));
  example.stderr.setEncoding("utf8").on("data", (data: string) => (stderr += data));
  const [code] = (await once(example, "exit")) as [number | null];
  assert.equal(code, 0, `example failed:\n${stdout}\n${stderr}`);
  assert.match(stdout, /^usage: {3}prompt \d+, completion 8, total \d+/m);
  assert.match(stdout, /^cost: {4}(unknown|\$\d+\.\d+)$/m);
  assert.match(stdout, /^metrics: ttft \d+\.\d ms, duration \d+\.\d ms, \d+\.\d tokens\/s, 8 chunks$/m);
});
