"""Text clean-up shared by the NLU pipeline, the language detector and the inputs.

Two different jobs live here:

* ``sanitize_input`` makes any incoming message safe to process (invalid
  UTF-8, control characters, absurd lengths) without losing what the person
  wrote: it never raises.
* ``normalize_for_matching`` folds the spelling variation of phone typing
  (accents, Arabic letter variants, elongations, Latin-script Darija digits)
  so that the classifier and the gazetteers see one form per word.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# A person never needs more than this to ask a question; longer messages are
# cut (and the reply says so) so that one paste cannot slow a worker down.
MAX_MESSAGE_CHARS = 2000

_ARABIC_DIACRITICS = re.compile(r"[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed]")
_TATWEEL = "\u0640"
_ARABIC_FOLD = str.maketrans(
    {
        "أ": "ا",
        "إ": "ا",
        "آ": "ا",
        "ٱ": "ا",
        "ى": "ي",
        "ة": "ه",
        "ؤ": "و",
        "ئ": "ي",
        "ڤ": "ف",
        "گ": "ك",
        "پ": "ب",
        "چ": "ش",
        "٠": "0",
        "١": "1",
        "٢": "2",
        "٣": "3",
        "٤": "4",
        "٥": "5",
        "٦": "6",
        "٧": "7",
        "٨": "8",
        "٩": "9",
        "؟": "?",
        "،": ",",
        "؛": ";",
    }
)
# "merciiii", "salaaam", "بزااااف": three or more of the same letter are one.
_ELONGATION = re.compile(r"(\w)\1{2,}")
_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


@dataclass(frozen=True)
class CleanText:
    """A message made safe to process, with what had to be done to it."""

    text: str
    truncated: bool = False
    was_invalid_utf8: bool = False

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()


def sanitize_input(raw: str | bytes | None, max_chars: int = MAX_MESSAGE_CHARS) -> CleanText:
    """Return ``raw`` as clean Unicode text; never raises.

    Invalid UTF-8 bytes become U+FFFD (the rest of the message is kept),
    control and bidi-override characters are dropped, white space is folded,
    and the text is cut at ``max_chars``.
    """
    invalid = False
    if raw is None:
        return CleanText("")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            invalid = True
    else:
        text = raw
        # Lone surrogates come from mis-decoded input and break JSON encoders.
        if any("\ud800" <= ch <= "\udfff" for ch in text):
            text = text.encode("utf-8", errors="replace").decode("utf-8")
            invalid = True
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    text = _WHITESPACE.sub(" ", text).strip()
    truncated = len(text) > max_chars
    if truncated:
        text = text[:max_chars].rstrip()
    return CleanText(text=text, truncated=truncated, was_invalid_utf8=invalid)


def strip_accents(text: str) -> str:
    """``é`` → ``e``, ``ß`` → ``ss``; leaves Arabic letters alone."""
    decomposed = unicodedata.normalize("NFD", text)
    kept = []
    for ch in decomposed:
        if unicodedata.category(ch) == "Mn" and not ("\u0600" <= ch <= "\u06ff"):
            continue
        kept.append(ch)
    return unicodedata.normalize("NFC", "".join(kept)).replace("ß", "ss")


def normalize_arabic(text: str) -> str:
    """Fold Arabic spelling variants: hamza seats, taa marbuta, alif maqsura, diacritics."""
    text = _ARABIC_DIACRITICS.sub("", text).replace(_TATWEEL, "")
    return text.translate(_ARABIC_FOLD)


def normalize_for_matching(text: str) -> str:
    """One canonical spelling for classification and gazetteer look-ups."""
    text = normalize_arabic(strip_accents(text.casefold()))
    text = text.replace("’", "'").replace("`", "'")
    return _ELONGATION.sub(r"\1\1", text)


_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def has_letters(text: str) -> bool:
    """True when the text holds at least one letter of any script (not only emoji, digits, signs)."""
    return bool(_LETTER.search(text))
