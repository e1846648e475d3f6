/**
 * Stream a prompt from a streamgate core, printing chunks as they come, then the final usage,
 * cost and metrics.
 *
 *     node dist/src/example.js [ADDRESS] [QUERY] [MODEL]
 *     node dist/src/example.js 127.0.0.1:50051 "Tell me about streaming"
 */
import { Code, ConnectError, createStreamgateClient, ErrorCode } from "./index.js";

async function main(argv: string[]): Promise<number> {
  const [address = "127.0.0.1:50051", query = "Tell me about streaming", model = ""] = argv;
  const client = createStreamgateClient(address);
  const controller = new AbortController();
  process.once("SIGINT", () => controller.abort());
  try {
    for await (const response of client.generate({ query, model }, { signal: controller.signal })) {
      const event = response.event;
      switch (event.case) {
        case "chunk":
          process.stdout.write(event.value.content);
          break;
        case "completion": {
          const { usage, metrics, costUsd } = event.value;
          process.stdout.write("\n\n");
          console.log(`model:   ${event.value.model} (finish: ${event.value.finishReason})`);
          console.log(
            `usage:   prompt ${usage?.promptTokens ?? 0}, completion ${usage?.completionTokens ?? 0}, ` +
              `total ${usage?.totalTokens ?? 0}${event.value.usageEstimated ? " (estimated)" : ""}`,
          );
          console.log(`cost:    ${costUsd === undefined ? "unknown" : `$${costUsd.toFixed(6)}`}`);
          console.log(
            `metrics: ttft ${metrics?.ttftMs.toFixed(1) ?? "?"} ms, ` +
              `duration ${metrics?.durationMs.toFixed(1) ?? "?"} ms, ` +
              `${metrics?.tokensPerSecond.toFixed(1) ?? "?"} tokens/s, ${metrics?.chunks ?? 0} chunks`,
          );
          console.log(`request: ${event.value.requestId}`);
          break;
        }
        case "error":
          process.stdout.write("\n\n");
          console.error(
            `error:   ${ErrorCode[event.value.code]} (retryable: ${event.value.retryable}): ${event.value.message}`,
          );
          break;
      }
    }
  } catch (err) {
    const error = ConnectError.from(err);
    console.error(`\ncall failed: ${Code[error.code]}: ${error.rawMessage}`);
    return 1;
  }
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
