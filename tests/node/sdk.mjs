// What the scripts here share: a client of the official `openai` package, configured from the
// environment the Python test sets (STREAMGATE_BASE_URL, STREAMGATE_API_KEY, STREAMGATE_MODEL), and
// one JSON line on stdout per thing the test checks.
import OpenAI, { APIError } from "openai";

export const model = process.env.STREAMGATE_MODEL;
export const messages = [{ role: "user", content: "hi" }];

export function client(apiKey = process.env.STREAMGATE_API_KEY) {
  return new OpenAI({ baseURL: process.env.STREAMGATE_BASE_URL, apiKey, maxRetries: 0 });
}

export function print(record) {
  process.stdout.write(JSON.stringify(record) + "\n");
}

// An error as the SDK raised it: its class, whether it is an APIError, and the OpenAI fields.
export function describe(error) {
  return {
    name: error.constructor.name,
    api_error: error instanceof APIError,
    status: error.status ?? null,
    type: error.type ?? null,
    code: error.code ?? null,
    param: error.param ?? null,
    message: error.message,
    request_id: error.requestID ?? null,
  };
}
