"""Per-caller, per-method rate limits: which buckets a call draws on and what a refusal says."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import structlog

from rag_grpc.errors import RagError, ResourceExhausted, Unavailable
from rag_grpc.limits.buckets import BucketStore, Charge, MemoryBuckets
from rag_grpc.settings import LimitSettings, RateLimitRule

log = structlog.get_logger(__name__)

# '*' covers the API's own services; health checks and reflection are limited only when a rule names them.
_WILDCARD_SCOPE = "rag_grpc."
# How often a failing Redis is reported while calls go on.
_BACKEND_WARNING_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # "requests", "tokens" or "backend": the label of the rate-limited metric
    error: RagError


def _burst(explicit: int, rate: float) -> float:
    return float(explicit) if explicit else max(1.0, math.ceil(rate))


class RateLimiter:
    def __init__(
        self,
        rules: Mapping[str, RateLimitRule],
        store: BucketStore,
        key_prefix: str = "rag-grpc:rl:",
        fail_open: bool = True,
    ) -> None:
        self._rules = dict(rules)
        self._store = store
        self._prefix = key_prefix
        self._fail_open = fail_open
        self._last_backend_warning = -math.inf
        self.rule_for = lru_cache(maxsize=1024)(self._rule_for)

    def _rule_for(self, full_method: str) -> RateLimitRule | None:
        """The most specific rule: full method, then method name, then service, then '*'."""
        service, _, name = full_method.lstrip("/").partition("/")
        keys = (
            (full_method, name, service, "*")
            if service.startswith(_WILDCARD_SCOPE)
            else (full_method, name, service)
        )
        for key in keys:
            rule = self._rules.get(key)
            if rule is not None:
                return rule if rule.requests_per_s or rule.tokens_per_s else None
        return None

    async def check(self, caller: str, full_method: str, requests: int, tokens: int) -> Refusal | None:
        """Draws `requests` and `tokens` from the caller's buckets for this method, or says why not."""
        rule = self.rule_for(full_method)
        if rule is None:
            return None
        charges: list[Charge] = []
        reasons: list[str] = []
        base = f"{self._prefix}{caller}:{full_method}"
        if rule.requests_per_s and requests:
            charges.append(
                Charge(
                    f"{base}:req",
                    rule.requests_per_s,
                    _burst(rule.request_burst, rule.requests_per_s),
                    requests,
                )
            )
            reasons.append("requests")
        if rule.tokens_per_s and tokens:
            burst = _burst(rule.token_burst, rule.tokens_per_s)
            if tokens > burst:
                # No wait makes this fit, so the caller gets no RetryInfo.
                return Refusal(
                    "tokens",
                    ResourceExhausted(
                        f"request needs about {tokens} tokens, more than the {burst:.0f} that caller "
                        f"{caller!r} may spend at once on {full_method}; send a smaller request"
                    ),
                )
            charges.append(Charge(f"{base}:tok", rule.tokens_per_s, burst, tokens))
            reasons.append("tokens")
        if not charges:
            return None
        try:
            verdict = await self._store.charge(charges)
        except Exception as exc:  # noqa: BLE001 - redis errors, timeouts, refused connections: the fail-open policy decides
            return self._backend_failed(exc)
        if verdict.allowed:
            return None
        reason = reasons[verdict.limiting]
        return Refusal(
            reason,
            ResourceExhausted(
                f"caller {caller!r} is over its {reason} limit for {full_method}; retry in {verdict.retry_after_s:.3f} s",
                retry_after_s=verdict.retry_after_s,
            ),
        )

    def _backend_failed(self, exc: Exception) -> Refusal | None:
        now = time.monotonic()
        if now - self._last_backend_warning >= _BACKEND_WARNING_INTERVAL_S:
            self._last_backend_warning = now
            log.warning("rate_limit_backend_failed", error=type(exc).__name__, fail_open=self._fail_open)
        if self._fail_open:
            return None
        return Refusal("backend", Unavailable("rate limiter unavailable; retry later"))

    async def aclose(self) -> None:
        await self._store.aclose()


def build_rate_limiter(limits: LimitSettings) -> RateLimiter | None:
    """The limiter the settings ask for, or None without rules. Close it with `aclose`."""
    if not limits.rate_limits:
        return None
    store: BucketStore
    if limits.rate_limit_backend == "redis":
        from rag_grpc.limits.redis_buckets import RedisBuckets

        store = RedisBuckets(
            limits.rate_limit_redis_url.get_secret_value(), limits.rate_limit_redis_timeout_s
        )
    else:
        store = MemoryBuckets()
    return RateLimiter(limits.rate_limits, store, limits.rate_limit_key_prefix, limits.rate_limit_fail_open)
