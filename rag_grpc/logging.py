"""structlog configuration: JSON lines to stderr by default, one call from main().

With `json` on, every line the process writes must parse as JSON (log shippers split on lines), so
besides our own structlog events this routes the libraries' stdlib `logging` records, `warnings` and
uncaught exceptions through the same renderer, and silences the libraries' progress bars.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from types import TracebackType
from typing import TextIO

import structlog

# The stdlib loggers of libraries whose import installs a handler of their own: transformers prints
# "[transformers] ..." and stops propagation; huggingface_hub adds a plain StreamHandler.
_SELF_CONFIGURING_LIBRARIES = ("transformers", "huggingface_hub")


class _RootHandler(logging.StreamHandler[TextIO]):
    """Marks the handler we put on the root logger, so that a second configure_logging replaces it."""


def configure_logging(level: str = "info", json: bool = True, stream: TextIO | None = None) -> None:
    """`stream` defaults to stderr (tests pass a buffer to read the lines back).

    Only with the default stream are progress bars and uncaught exceptions taken over too: they are about
    what the process itself writes to stderr, and a test run must keep its own hooks (pytest reports
    through them) and environment (which its child processes inherit).
    """
    own_stderr = stream is None
    stream = stream if stream is not None else sys.stderr
    numeric = logging.getLevelNamesMapping()[level.upper()]
    if json and own_stderr:
        # Before the libraries are imported: they read these at import time.
        _silence_progress_bars()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # JSON needs exceptions rendered into a string field first; ConsoleRenderer prints them itself, as
    # plain tracebacks (its default, rich, would also print local variables, which may hold secrets).
    render: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if json
        else [structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)]
    )
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write() per line (PrintLogger writes the newline separately), so that lines from other
        # threads, through the stdlib handler below, cannot land in the middle of one of ours.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(stream, numeric, shared, render)
    if json and own_stderr:
        _log_uncaught_exceptions()


def _route_stdlib_logging(
    stream: TextIO,
    numeric: int,
    shared: list[structlog.typing.Processor],
    render: list[structlog.typing.Processor],
) -> None:
    """Stdlib records (transformers, grpc, faiss, urllib3, sentence-transformers, `warnings`) go to the
    same stream with the same renderer, plus the logger's name; libraries stay at WARNING unless debug."""
    handler = _RootHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RootHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    logging.captureWarnings(True)
    for name in _SELF_CONFIGURING_LIBRARIES:
        try:
            # Importing the library's logging module installs its handler now, once, so that we can
            # take it off; a later import of the library does not add it again.
            importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue
        library = logging.getLogger(name)
        for own in list(library.handlers):
            library.removeHandler(own)
        library.propagate = True
        library.setLevel(logging.NOTSET)  # the root's level decides


def _silence_progress_bars() -> None:
    """Progress bars are not log lines: tqdm redraws them with carriage returns on stderr.

    transformers ("Loading weights", "Writing model shards") and huggingface_hub have public switches;
    tqdm used directly (the GGUF dequantization bar) only reads TQDM_DISABLE when tqdm is first imported,
    which configure_logging precedes (the CLI imports the models lazily). An operator who set these
    variables explicitly keeps what they chose.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # gRPC's C core writes its own plain-text lines ("E1201 ... add_port.cc] Failed to add port") straight
    # to the stderr file descriptor, past any Python handler. The failures that matter also reach us as
    # Python exceptions, which are logged as JSON; an operator who wants the C core's lines sets
    # GRPC_VERBOSITY (read when grpc is first imported, which the CLI does after configure_logging).
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # also huggingface_hub's


def _log_uncaught_exceptions() -> None:
    """Tracebacks that would reach stderr as plain text (an exception escaping main or a thread, an
    exception in __del__) are logged as one JSON line each instead."""
    log = structlog.get_logger("rag_grpc")

    def on_exception(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        log.critical("uncaught_exception", exc_info=(exc_type, exc, tb))

    def on_thread_exception(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:  # what the default hook ignores too
            return
        thread = args.thread.name if args.thread is not None else None
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        log.error("uncaught_thread_exception", thread=thread, exc_info=exc_info)

    def on_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
        log.warning(
            "exception_ignored",
            where=unraisable.err_msg or "Exception ignored in",
            object=repr(unraisable.object),
            exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
        )

    sys.excepthook = on_exception
    threading.excepthook = on_thread_exception
    sys.unraisablehook = on_unraisable
