// Runs against a real server: tests/clients/test_node_client.py starts one, stores a few documents tagged
// RAG_GRPC_TEST_TAG and runs `node --test` with RAG_GRPC_TARGET set to its address.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { Code, FinishReason, RagClient, RagError, type GenerateEvent } from "../src/client.js";

const target = process.env.RAG_GRPC_TARGET;
const tag = process.env.RAG_GRPC_TEST_TAG ?? "";
if (!target) {
  throw new Error("RAG_GRPC_TARGET (host:port of a running rag-grpc server) is not set");
}
const client = new RagClient({ baseUrl: `http://${target}`, timeoutMs: 120_000 });
const onlyOurs = { test: tag };
after(() => client.close());

test("Embed returns one unit vector per text", async () => {
  const response = await client.embed(["The lighthouse keeper lit the lamp.", "Coffee is roasted."]);
  assert.equal(response.embeddings.length, 2);
  assert.equal(response.embeddings[0].values.length, response.dimension);
  const norm = Math.hypot(...response.embeddings[0].values);
  assert.ok(Math.abs(norm - 1) < 1e-3, `norm ${norm}`);
  assert.ok(response.totalTokens > 0);
});

test("Retrieve finds the tagged document about lighthouses first", async () => {
  const response = await client.retrieve({
    query: { case: "text", value: "Which lighthouse uses a Fresnel lens?" },
    topK: 2,
    filter: onlyOurs,
  });
  assert.equal(response.hits.length, 2);
  assert.equal(response.hits[0].id, `${tag}-lighthouse`);
  assert.ok(response.hits[0].score >= response.hits[1].score);
  assert.equal(response.hits[0].metadata.test, tag);
});

test("a grounded Generate streams the sources first, then text, then one final", async () => {
  const events: GenerateEvent[] = [];
  for await (const event of client.generate({
    prompt: "Which lighthouse uses a Fresnel lens?",
    sampling: { maxTokens: 12, temperature: 0 },
    retrieval: { topK: 2, filter: onlyOurs },
  })) {
    events.push(event);
  }
  const first = events[0];
  assert.equal(first.kind, "sources");
  assert.equal(first.kind === "sources" && first.hits[0].id, `${tag}-lighthouse`);
  const last = events.at(-1);
  assert.ok(last?.kind === "final");
  assert.ok([FinishReason.STOP, FinishReason.LENGTH].includes(last.final.finishReason));
  const deltas = events.slice(1, -1);
  assert.ok(deltas.length > 0 && deltas.every((event) => event.kind === "delta"));
  const tokens = deltas.reduce((sum, event) => sum + (event.kind === "delta" ? event.tokenCount : 0), 0);
  assert.equal(tokens, last.final.usage?.completionTokens);
  assert.ok(deltas.map((event) => (event.kind === "delta" ? event.text : "")).join("").length > 0);
});

test("answer() collects the streamed answer", async () => {
  const answer = await client.answer({ prompt: "Say hello.", sampling: { maxTokens: 4, temperature: 0 } });
  assert.ok(answer.text.length > 0);
  assert.equal(answer.sources.length, 0);
  assert.equal(answer.final.usage?.completionTokens, 4);
});

test("leaving the loop mid-stream cancels the call", async () => {
  let deltas = 0;
  for await (const event of client.generate(
    { prompt: "Write a long story about the sea.", sampling: { maxTokens: 512, minTokens: 512 } },
    { requestId: `${tag}-left-loop` },
  )) {
    if (event.kind === "delta" && ++deltas === 2) break;
  }
  assert.equal(deltas, 2);
});

test("aborting the signal mid-stream cancels the call with CANCELLED", async () => {
  const abort = new AbortController();
  let deltas = 0;
  await assert.rejects(
    async () => {
      for await (const event of client.generate(
        { prompt: "Write a long story about the sea.", sampling: { maxTokens: 512, minTokens: 512 } },
        { signal: abort.signal, requestId: `${tag}-aborted` },
      )) {
        if (event.kind === "delta" && ++deltas === 2) abort.abort();
      }
    },
    (error: unknown) => error instanceof RagError && error.code === Code.Canceled,
  );
  assert.equal(deltas, 2);
});

test("INVALID_ARGUMENT names the field", async () => {
  await assert.rejects(
    client.answer({ prompt: "hi", sampling: { maxTokens: 0 } }),
    (error: unknown) =>
      error instanceof RagError && error.code === Code.InvalidArgument && error.field === "sampling.max_tokens",
  );
  await assert.rejects(
    client.embed(["fine", ""]),
    (error: unknown) => error instanceof RagError && error.code === Code.InvalidArgument && error.field === "texts[1]",
  );
});
