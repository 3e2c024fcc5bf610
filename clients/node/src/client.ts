// A small typed client for rag-grpc over the gRPC protocol (Connect for Node's gRPC transport, HTTP/2).
//
// The stubs under ./gen are generated from protos/ by `buf generate` (see buf.gen.yaml at the repository
// root; `npm run generate` here). They are build output and never committed.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import {
  EmbedService,
  type EmbedResponse,
  type Final,
  FinishReason,
  GenerateRequestSchema,
  GenerateService,
  type Hit,
  InfoService,
  type InfoResponse,
  RetrieveRequestSchema,
  type RetrieveResponse,
  RetrieveService,
} from "./gen/rag_grpc/v1/rag_pb.js";

export { Code, FinishReason };
export type { EmbedResponse, Final, Hit, InfoResponse, RetrieveResponse };

export type GenerateRequestInit = MessageInitShape<typeof GenerateRequestSchema>;
export type RetrieveRequestInit = MessageInitShape<typeof RetrieveRequestSchema>;

/** One event of a streamed Generate, in the order the server sends them: `sources` first (only when
 * retrieval is on), then `delta`s as text is produced, then exactly one `final`. */
export type GenerateEvent =
  | { kind: "sources"; hits: Hit[]; indexVersion: bigint }
  | { kind: "delta"; text: string; tokenCount: number }
  | { kind: "final"; final: Final };

/** A whole answer, as `RagClient.answer` collects it from the stream. */
export interface Answer {
  text: string;
  sources: Hit[];
  final: Final;
}

export interface RagClientOptions {
  /** "http://host:port" (plaintext) or "https://host:port" (TLS). */
  baseUrl: string;
  /** Sent as `authorization: Bearer <key>` on every call. */
  apiKey?: string;
  /** Deadline of each call unless the call gives its own; default 30 s. */
  timeoutMs?: number;
  /** PEM trust roots, and a client certificate and key for mutual TLS (with an https:// baseUrl). */
  tls?: { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer };
  /** A transport of the caller's own (interceptors, other HTTP/2 options); then only `timeoutMs` of the
   * other options is used, and `close()` leaves the transport's connection to its owner. */
  transport?: Transport;
}

export interface CallOptions {
  timeoutMs?: number;
  /** Aborting it cancels the call; the server sees CANCELLED and stops generating. */
  signal?: AbortSignal;
  /** Sent as the `x-request-id` header; the server echoes it and uses it in its logs. */
  requestId?: string;
}

/** A call that ended with a non-OK status. `field` is the request field the server named in an
 * INVALID_ARGUMENT ("sampling.max_tokens", "texts[2]"), `retryAfterMs` the delay it asked for. */
export class RagError extends Error {
  readonly code: Code;
  readonly field: string | undefined;
  readonly retryAfterMs: number | undefined;
  readonly cause: ConnectError;

  constructor(cause: ConnectError) {
    super(`${Code[cause.code]}: ${cause.rawMessage}`);
    this.name = "RagError";
    this.code = cause.code;
    this.cause = cause;
    // The server words every INVALID_ARGUMENT as "<field>: <problem>".
    const named = cause.code === Code.InvalidArgument ? /^([A-Za-z_][\w.[\]]*): /.exec(cause.rawMessage) : null;
    this.field = named?.[1];
    const retryAfter = Number(cause.metadata.get("retry-after"));
    this.retryAfterMs = Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined;
  }
}

function asRagError(error: unknown): unknown {
  return error instanceof ConnectError ? new RagError(error) : error;
}

async function drain(messages: AsyncIterator<unknown>): Promise<void> {
  try {
    while (!(await messages.next()).done) {
      // discarded
    }
  } catch {
    // the cancellation's own error
  }
}

function authorization(apiKey: string): Interceptor {
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${apiKey}`);
    return await next(request);
  };
}

export class RagClient {
  private readonly embedClient: Client<typeof EmbedService>;
  private readonly retrieveClient: Client<typeof RetrieveService>;
  private readonly generateClient: Client<typeof GenerateService>;
  private readonly infoClient: Client<typeof InfoService>;
  private readonly timeoutMs: number;
  private readonly sessions: Http2SessionManager | undefined;

  constructor(options: RagClientOptions) {
    let transport = options.transport;
    if (transport === undefined) {
      // Our own connection manager, so that close() can end the HTTP/2 connection: an open one keeps
      // node's event loop alive.
      this.sessions = new Http2SessionManager(options.baseUrl, {}, options.tls ?? {});
      transport = createGrpcTransport({
        baseUrl: options.baseUrl,
        sessionManager: this.sessions,
        interceptors: options.apiKey ? [authorization(options.apiKey)] : [],
      });
    }
    this.embedClient = createClient(EmbedService, transport);
    this.retrieveClient = createClient(RetrieveService, transport);
    this.generateClient = createClient(GenerateService, transport);
    this.infoClient = createClient(InfoService, transport);
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** Closes the connection (calls still running fail). */
  close(): void {
    this.sessions?.abort();
  }

  private callOptions(options: CallOptions = {}) {
    const headers: Record<string, string> = options.requestId ? { "x-request-id": options.requestId } : {};
    return { timeoutMs: options.timeoutMs ?? this.timeoutMs, signal: options.signal, headers };
  }

  async embed(texts: string[], options?: CallOptions): Promise<EmbedResponse> {
    try {
      return await this.embedClient.embed({ texts }, this.callOptions(options));
    } catch (error) {
      throw asRagError(error);
    }
  }

  /** `retrieve({ query: { case: "text", value: "..." }, topK: 3 })`; `retrieveText` for the common case. */
  async retrieve(request: RetrieveRequestInit, options?: CallOptions): Promise<RetrieveResponse> {
    try {
      return await this.retrieveClient.retrieve(request, this.callOptions(options));
    } catch (error) {
      throw asRagError(error);
    }
  }

  async retrieveText(text: string, topK?: number, options?: CallOptions): Promise<RetrieveResponse> {
    return await this.retrieve({ query: { case: "text", value: text }, topK }, options);
  }

  async info(options?: CallOptions): Promise<InfoResponse> {
    try {
      return await this.infoClient.info({}, this.callOptions(options));
    } catch (error) {
      throw asRagError(error);
    }
  }

  /** The streamed Generate as typed events. Breaking out of the loop (or aborting `signal`) cancels the
   * call, so the server stops generating. */
  async *generate(request: GenerateRequestInit, options?: CallOptions): AsyncGenerator<GenerateEvent, void> {
    // An abort of our own, so that leaving the loop early cancels the call even without a caller's signal.
    const cancel = new AbortController();
    const onAbort = () => cancel.abort(options?.signal?.reason);
    options?.signal?.addEventListener("abort", onAbort, { once: true });
    if (options?.signal?.aborted) onAbort();
    const stream = this.generateClient.generate(create(GenerateRequestSchema, request), {
      ...this.callOptions(options),
      signal: cancel.signal,
    });
    // Iterated by hand, not with for-await: a caller leaving the loop early must cancel the call first.
    // for-await would first await the stream's return(), which waits for the server to end the stream.
    const messages = stream[Symbol.asyncIterator]();
    let finished = false;
    try {
      for (;;) {
        const next = await messages.next();
        if (next.done) break;
        const event = next.value.event;
        switch (event.case) {
          case "sources":
            yield { kind: "sources", hits: event.value.hits, indexVersion: event.value.indexVersion };
            break;
          case "delta":
            yield { kind: "delta", text: event.value.text, tokenCount: event.value.tokenCount };
            break;
          case "final":
            yield { kind: "final", final: event.value };
            break;
          default:
            // A newer server's event that this client does not know: skipped, as proto3 readers do.
            break;
        }
      }
      finished = true;
    } catch (error) {
      throw asRagError(error);
    } finally {
      options?.signal?.removeEventListener("abort", onAbort);
      if (!finished) {
        cancel.abort();
        // Read on to the end the abort causes: only then does the transport release the call (its
        // deadline timer, which would otherwise keep node running until it fires).
        await drain(messages);
      }
    }
  }

  /** Collects a whole answer from `generate`. */
  async answer(request: GenerateRequestInit, options?: CallOptions): Promise<Answer> {
    let text = "";
    let sources: Hit[] = [];
    let final: Final | undefined;
    for await (const event of this.generate(request, options)) {
      if (event.kind === "sources") sources = event.hits;
      else if (event.kind === "delta") text += event.text;
      else final = event.final;
    }
    if (final === undefined) {
      throw new Error("Generate ended without a Final message");
    }
    return { text, sources, final };
  }
}
