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
    """math-verify parse of a reference answer, cached: the same gold is checked G times a step.

    A bare LaTeX gold ("\\sqrt{2}") is only found inside math delimiters, hence the retry.
    """
    parsed = _parse(gold) or _parse(f"${gold}$")
    return tuple(parsed)


def math_verify_equal(gold: str, completion: str) -> bool:
    """True if the completion's answer equals the gold answer; integers exactly, else math-verify."""
    gold, completion = gold.strip(), completion.strip()
    if INTEGER.fullmatch(gold) and INTEGER.fullmatch(completion):
        return canonical_integer(gold) == canonical_integer(completion)
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        return False
    return verify(list(gold_parsed), _parse(completion), timeout_seconds=_timeout_seconds())


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
