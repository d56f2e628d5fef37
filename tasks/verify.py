"""Answer checking with math-verify, behind a fast exact-integer path.

math-verify (`parse` + `verify`) costs 0.25-0.6 ms per call on this project's 2-core CPU, and
its extraction is lenient: it finds the last number in any text, so "85abc" parses as 85.
Integer answers are therefore compared exactly first (about 1 us, and strict), and math-verify
is called only for answers the integer path cannot decide ("85.0", "$85$", "\\boxed{85}", "1/2").
"""

import re
import threading
from fractions import Fraction
from functools import lru_cache

from math_verify import parse, verify

INTEGER = re.compile(r"[+-]?\d+")
# One number, possibly written as "85.0", "$85$" or "\boxed{85}". Expressions ("47+38", "170/2")
# are not answers: math-verify would score an echo of the prompt as correct. Trailing text
# ("85abc", "85\n1+2=3") and several numbers ("8 5") are not answers either.
_NUMBER_NOTATION = re.compile(r"(?:\$|\\boxed\{|\s)*[+-]?\d+(?:\.\d*)?(?:\$|\}|\s)*")


def canonical_integer(text: str) -> str:
    """"+085" -> "85", "-0" -> "0"; by string, since int() refuses more than 4300 digits."""
    text = text.strip()
    digits = text.lstrip("+-").lstrip("0") or "0"
    return "-" + digits if text.startswith("-") and digits != "0" else digits


def _timeout_seconds() -> int | None:
    # math-verify's timeout uses signal.alarm, which raises outside the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse(text: str) -> list:
    return parse(text, parsing_timeout=_timeout_seconds())


@lru_cache(maxsize=65536)
def parse_gold(gold: str) -> tuple:
    """math-verify parse of a reference answer, cached: the same gold is checked G times a step."""
    return tuple(_parse_answer(gold))


def _parse_answer(text: str) -> list:
    """math-verify parse of an answer that may be bare LaTeX (a \\boxed{} content such as "\\sqrt 2"): outside
    math delimiters math-verify would read only its last number, so LaTeX is parsed inside "$...$" first."""
    attempts = (f"${text}$", text) if "\\" in text else (text, f"${text}$")
    for attempt in attempts:
        parsed = _parse(attempt)
        if parsed:
            return parsed
    return []


def math_verify_equal(gold: str, completion: str) -> bool:
    """True if the completion's answer equals the gold answer; integers exactly, else math-verify.

    Both sides may be bare LaTeX (the content of a \\boxed{}, e.g. "\\frac{3}{4}")."""
    gold, completion = gold.strip(), completion.strip()
    if INTEGER.fullmatch(gold) and INTEGER.fullmatch(completion):
        return canonical_integer(gold) == canonical_integer(completion)
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        return False
    return verify(list(gold_parsed), _parse_answer(completion), timeout_seconds=_timeout_seconds())


_THINK_CLOSE = "</think>"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def strip_thinking(completion: str) -> str | None:
    """The text after a reasoning model's `<think>...</think>` block; None if the block never closes (the
    completion was cut off while thinking, so it holds no answer). Text without a think block is unchanged."""
    if _THINK_CLOSE in completion:
        return completion.rsplit(_THINK_CLOSE, 1)[1]
    return None if "<think>" in completion else completion


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} in `text` (braces balanced), None if there is none or it never closes."""
    starts = [match.end() for match in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for position in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[start:position]
    return None


def final_answer(completion: str) -> str | None:
    """The answer a reasoning completion commits to: think blocks dropped, then the last \\boxed{}, else what
    follows the last GSM8K-style "####", else the whole remaining text (math-verify then takes its last answer).
    None when there is nothing to check (cut off inside a think block, an unclosed \\boxed{, empty text)."""
    text = strip_thinking(completion)
    if text is None:
        return None
    if _BOXED.search(text):
        return last_boxed(text)
    if "####" in text:
        after = text.rsplit("####", 1)[1].strip()
        text = after.splitlines()[0] if after else ""
    return text.strip() or None


def gold_answer(reference: str) -> str:
    """The answer inside a reference: GSM8K's "reasoning #### 72" -> "72", a MATH solution's last
    \\boxed{...} -> its content; anything else unchanged."""
    if "####" in reference:
        return reference.rsplit("####", 1)[1].strip()
    boxed = last_boxed(reference) if _BOXED.search(reference) else None
    return boxed if boxed is not None else reference


def number_answer(completion: str) -> str | None:
    """The stripped completion if it is nothing but one number, else None."""
    text = completion.strip()
    return text if _NUMBER_NOTATION.fullmatch(text) else None


def normalize_answer(text: str) -> str | None:
    """Canonical string of an answer: "+085" and "85.0" give "85", "2/4" gives "1/2"; None if unparsable."""
    if INTEGER.fullmatch(text.strip()):
        return canonical_integer(text)
    parsed = _parse(text)
    if not parsed:
        return None
    value = parsed[0]
    try:
        rational = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return str(value)
    return str(rational)
