// The calls that are not a stream: a whole completion, the model list, a bad request, a wrong key.
import { client, describe, messages, model, print } from "./sdk.mjs";

const openai = client();
const completion = await openai.chat.completions.create({ model, messages, max_completion_tokens: 3 });
print({ completion, request_id: completion._request_id });

const models = [];
for await (const entry of openai.models.list()) {
  models.push(entry.id);
}
print({ models });

try {
  await openai.chat.completions.create({ model, messages, temperature: "warm" });
  print({ bad_request: null });
} catch (error) {
  print({ bad_request: describe(error) });
}

try {
  await client("node-wrong-key-0000").chat.completions.create({ model, messages });
  print({ wrong_key: null });
} catch (error) {
  print({ wrong_key: describe(error) });
}
