"""Answer checking for math responses: the last \\boxed{} of a response against the gold answer.

math-verify (Hugging Face) does the equivalence: it parses both sides to SymPy and compares them
numerically and symbolically, so 1/2, 0.5, \\frac{1}{2} and \\dfrac12 are all the same answer.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Optional

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def extract_boxed(text: str) -> Optional[str]:
    """The content of the last \\boxed{...} (or \\fbox{...}) in text, braces balanced; None if there is none."""
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    # an unclosed last box (a response cut off by max_new_tokens) is no answer, not the box before it
    return _box_content(text, start + len(cmd))


def answer_part(text: str) -> str:
    """The part of a response that holds its answer: what follows the last </think> of a reasoning model
    (a box left inside the finished reasoning is no answer), else the whole text. A response without
    </think> (a student that skips it, or one cut off by max_new_tokens) is read whole and its last
    \\boxed{} counts: the paper's protocol names only the boxed answer, and a collapsed student that boxes
    an answer without closing <think> is the Imitation Shock's own symptom (docs/bottleneck.md)."""
    end = text.rfind("</think>")
    return text[end + len("</think>"):] if end >= 0 else text


def _box_content(text: str, i: int) -> Optional[str]:
    """Content of the box whose command ends at i: `{...}` with nested braces, or `\\boxed 5` (one token)."""
    if i < len(text) and text[i] == "{":
        depth, j = 0, i
        while j < len(text):
            c = text[j]
            if c == "\\":  # an escaped character (\{, \}, \\) never opens or closes a group
                j += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip()
            j += 1
        return None
    if i < len(text) and text[i] == " ":
        rest = text[i:].lstrip(" ")
        token = rest.split(None, 1)[0] if rest.strip() else ""
        token = token.rstrip(".,;$")
        return token or None
    return None


def _timeout() -> Optional[int]:
    # math-verify's timeouts use SIGALRM, which only works in the main thread
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    text = gold.strip()
    # math-verify expects the gold inside a math environment ($...$ or \boxed{}) to read it as LaTeX
    if not any(m in text for m in ("$", "\\boxed", "\\(", "\\[")):
        text = f"${text}$"
    return parse(text, parsing_timeout=_timeout())


def is_correct(response_text: str, gold: str) -> bool:
    """True when the response's last \\boxed{} answer (after its reasoning: answer_part) is equivalent to
    gold; no \\boxed{} is wrong."""
    from math_verify import parse, verify

    content = extract_boxed(answer_part(response_text))
    if content is None or not content:
        return False
    gold_parsed = _parse_gold(str(gold))
    if not gold_parsed:
        return False
    answer = parse("\\boxed{" + content + "}", parsing_timeout=_timeout())
    if not answer:
        return False
    # order matters: math-verify's verify(gold, prediction) is not symmetric
    return bool(verify(gold_parsed, answer, timeout_seconds=_timeout()))
