"""The Hugging Face Hub, asked only when it can answer: offline settings honoured, no network found fast.

Every place that takes a Hub id (`--autoencoder`, model folders for `from_pretrained` and every command that
takes a checkpoint, Hub datasets) asks `why_offline()` first. Without it, a machine with no route to the Hub
spends half a minute in huggingface_hub's retries and prints a line per retry before failing anyway.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

# owner/name, optionally @revision (a branch, tag or commit).
HUB_ID = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
TRUE = ("1", "true", "yes", "on")


def parse_id(text: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) of `owner/name[@revision]`; None when `text` is not shaped like one."""
    match = HUB_ID.match(str(text))
    return (match["repo"], match["revision"]) if match else None


def offline_by_setting() -> bool:
    """Whether HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE) says not to ask the Hub, read now."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in TRUE for name in names)


@functools.cache
def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within `timeout` seconds, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"cannot reach {host} ({error.strerror or type(error).__name__})"


def why_offline(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be asked now (a setting, or no route to its endpoint), or None when it can."""
    if offline_by_setting():
        return "HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set"
    from huggingface_hub import constants

    # HF_ENDPOINT as set now, else as huggingface_hub read it at import.
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    return _reachable(endpoint.hostname or "huggingface.co", port, timeout)


def unavailable(what: str, repo: str, why: str) -> str:
    """The one line for a Hub id that could not be had: what was asked, why, and what to do."""
    return (f"{what}={repo}: no such local path, and as a Hub id: {why}; fetch it where there is a network "
            f"(`hf download {repo}`) and rerun with that cache (HF_HOME), or pass a local folder")


def fetch(text: str, what: str, allow_patterns: list[str] | None = None) -> Path:
    """The local folder of Hub id `owner/name[@revision]` (from the Hub cache, downloaded when it can be asked).

    `what` names the flag or argument for the error line; `allow_patterns` limits what is downloaded.
    Raises ValueError with one line when the id is offline, unknown or unreachable.
    """
    repo, revision = parse_id(text) or (None, None)
    if repo is None:
        raise ValueError(f"{what}={text}: not a Hub id (owner/name or owner/name@revision)")
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    why = why_offline()
    try:
        folder = huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=allow_patterns,
                                                   local_files_only=why is not None)
    except LocalEntryNotFoundError:
        raise ValueError(unavailable(what, text, f"{why}, and it is not in the Hub cache")) from None
    except RepositoryNotFoundError:
        raise ValueError(unavailable(what, text, "the Hub has no such repository (or it is private: "
                                                 "`hf auth login`)")) from None
    except (HfHubHTTPError, OSError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise ValueError(unavailable(what, text, f"the Hub did not provide it ({first_line})")) from None
    return Path(folder)
