// Leave a stream after its first text: `abort` with an AbortController, or `break` out of the loop.
// Then print {"left": ...} and stay alive until stdin ends, so that what closes the upstream is the
// SDK's leaving, not this process exiting.
import { client, messages, model, print } from "./sdk.mjs";

const how = process.argv[2];
const controller = new AbortController();
const stream = await client().chat.completions.create(
  { model, messages, stream: true },
  { signal: controller.signal },
);
let text = "";
let left = "at the end of the stream";
for await (const chunk of stream) {
  if (text) {
    continue; // aborted: what was already read may still come, then the loop ends quietly
  }
  text = chunk.choices[0]?.delta?.content ?? "";
  if (text && how === "abort") {
    controller.abort();
    left = "aborted";
  } else if (text) {
    left = "break";
    break;
  }
}
print({ left, text });
process.stdin.resume();
process.stdin.on("end", () => process.exit(0));
