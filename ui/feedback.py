"""How the pages tell the curator what happened.

An action runs in a button callback, before the page is drawn again; its outcome is kept
in session state for exactly one rerun and shown at the top of the page. Errors of ours
(`VQAError`) are shown with their own message; anything else is logged server-side and
shown as a generic failure, so no library's exception text (which may carry a request's
headers) ever reaches the page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import streamlit as st

from vqa_engine.errors import VQAError

Kind = Literal["success", "error", "info", "warning"]
_KEY = "_feedback"

log = logging.getLogger("vqa_curator.ui")


def tell(kind: Kind, message: str) -> None:
    """Show `message` at the top of the next rendering of the page."""
    st.session_state.setdefault(_KEY, []).append((kind, message))


def show_pending() -> None:
    """Render (and forget) the messages left by the last action."""
    for kind, message in st.session_state.pop(_KEY, []):
        if kind == "success":
            st.toast(message, icon=":material/check_circle:")
        elif kind == "error":
            st.error(message, icon=":material/error:")
        elif kind == "warning":
            st.warning(message, icon=":material/warning:")
        else:
            st.info(message, icon=":material/info:")


@contextmanager
def reported() -> Iterator[None]:
    """Turn an action's failure into a message instead of a traceback."""
    try:
        yield
    except VQAError as exc:
        tell("error", str(exc))
    except Exception:  # noqa: BLE001 - the page must survive; details go to the log only
        log.exception("unexpected failure in a page action")
        tell("error", "the action failed unexpectedly; the server log has the details")


def action(func: Callable[..., Any]) -> Callable[..., None]:
    """Wrap a button callback so its errors become messages."""

    def run(*args: Any, **kwargs: Any) -> None:
        with reported():
            func(*args, **kwargs)

    run.__name__ = getattr(func, "__name__", "action")
    return run
