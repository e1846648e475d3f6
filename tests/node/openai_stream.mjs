// Stream a chat completion with usage: each chunk as a JSON line, then how the stream ended
// ({"done": ...}, or {"error": ...} when the SDK throws mid-stream).
import { client, describe, messages, model, print } from "./sdk.mjs";

const { data: stream, response } = await client()
  .chat.completions.create({ model, messages, stream: true, stream_options: { include_usage: true } })
  .withResponse();
print({ request_id: response.headers.get("x-request-id") });
try {
  for await (const chunk of stream) {
    print({ chunk });
  }
  print({ done: true });
} catch (error) {
  print({ error: describe(error) });
}
