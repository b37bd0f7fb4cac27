"""Which language is a family writing in? Arabic (with Darija noted), French, Spanish, Italian or German.

Off-the-shelf detectors fail here: langdetect gets 17% of Latin-script
Darija, and none of them has a label for it. This detector works in layers,
each one cheap and explainable:

1. Script. Arabic letters mean Arabic; Darija words in Arabic script
   (بغيت، ديال، واش…) mark the dialect.
2. Latin-script Darija cues: digits used as letters inside words (3 = ع,
   7 = ح, 9 = ق: "3afak", "m3a", "9raya"), not grade numbers like "3eme".
3. A character n-gram naive Bayes model over the Latin-script language forms
   (fr, es, it, de and Darija), trained at start-up on the project's own NLU
   examples (``nlu_data/``), so it knows the words families really type.
4. Messages that carry no language of their own ("ok", "merci", "👍", "12")
   are *weak*: they keep the conversation's language instead of switching it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import yaml

from jisr.paths import NLU_DATA_DIR, reply_language_of
from jisr.text import has_letters, normalize_for_matching

LATIN_FORMS = ("fr", "es", "it", "de", "ary")

_ARABIC_LETTER = re.compile(r"[\u0621-\u064a\u066e-\u06d3\u06fa-\u06ff]")
_LATIN_LETTER = re.compile(r"[a-zA-Z\u00c0-\u024f]")
_WORD = re.compile(r"[\w']+", re.UNICODE)
# "3eme", "4º", "2nde", "1ere", "5e", "12h", "2024": numbers, not Darija letters.
_NUMBERISH = re.compile(r"^\d+(?:e|eme|er|ere|nd|nde|o|º|ª|h|am|pm|ans?|anni|anos|jahre|st|th|x)?$")
_DIGIT_AS_LETTER = re.compile(r"(?:[a-z][235789]|[235789][a-z])")
# "cm2", "l2", "b1", "a2": grades and language levels, a letter or two and a number.
_CODE_LIKE = re.compile(r"^[a-z]{1,3}[0-9]{1,2}$")

# Darija written in Arabic script: words MSA does not use.
_DARIJA_ARABIC_WORDS = frozenset(
    normalize_for_matching(w)
    for w in """
    بغيت بغا بغات بغينا ديال ديالي ديالو ديالها ديالنا واش كيفاش علاش فين فاين شحال إمتى امتى ملي
    دابا بزاف مزيان مزيانة كاين كاينة كاينين ماكاينش ماشي شي حتى غير باش خاصني خاص خصني عافاك
    الله يخليك ولدي بنتي الدراري دراري ولادي صافي باركا واخا ايوا إيوا شنو اشنو آش اش كنقرا كيقرا
    كتقرا كيمشي نمشي نسجل نعرف بغيتي قرايا القراية المدرسة شكون لي اللي حيت كنبغي مابغاش مابغاتش
    ماعرفتش معرفتش فهمتش غادي غادية كيدير كندير نديرو راه راني راك هادشي هاد هادي هادا لهيه لهنا
    """.split()
)

# Messages that say nothing about the language: they keep the conversation's.
_NEUTRAL_WORDS = frozenset(
    normalize_for_matching(w)
    for w in """
    ok okay oki okey k kk merci mercii thanks thank thx ty bye byebye hello hi hey salam slm salut? lol mdr
    yes no si oui non ja nein top super bravo cool good nice stop start menu help ciao ola hola? inchallah
    inshallah hamdoulah hamdulillah bismillah wallah amin amine shukran chokran choukran شكرا سلام ok
    la wakha slt coucou dac اوك اوكي مرسي باي السلام عليكم
    """.replace("?", "").split()
)


# When a neutral message opens a conversation, the language it most likely
# belongs to among Jisr's families (still marked not confident).
_NEUTRAL_DEFAULTS = {
    normalize_for_matching(w): lang
    for lang, words in {
        "fr": "merci mercii oui non salut slt coucou bonjour bonsoir stp svp d'accord dac",
        "es": "si no gracias hola vale",
        "it": "grazie ciao",
        "de": "ja nein danke hallo tschuss",
        "ar": "la salam slm shukran chokran choukran inchallah inshallah hamdoulah hamdulillah wallah bismillah amin amine wakha",
    }.items()
    for w in words.split()
}


@dataclass(frozen=True)
class LanguageGuess:
    """What the detector concluded for one message.

    ``language`` is the reply language (ar, fr, es, it, de) or None when the
    message gives no clue and there is no conversation language to keep.
    ``form`` is the written form (ary for Darija in Latin letters).
    ``confident`` is False when the message did not decide by itself.
    """

    language: str | None
    form: str | None
    dialect: str | None
    confident: bool
    reason: str
    scores: Mapping[str, float] = field(default_factory=dict)


class LatinNaiveBayes:
    """Multinomial naive Bayes on character 1–4-grams and whole words."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self._counts: dict[str, Counter[str]] = defaultdict(Counter)
        self._totals: Counter[str] = Counter()
        self._vocabulary: set[str] = set()

    @staticmethod
    def features(text: str) -> list[str]:
        feats: list[str] = []
        for word in _WORD.findall(normalize_for_matching(text)):
            feats.append("w:" + word)
            padded = f" {word} "
            for n in (1, 2, 3, 4):
                feats.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
        return feats

    def fit(self, samples: Iterable[tuple[str, str]]) -> "LatinNaiveBayes":
        for text, form in samples:
            for feat in self.features(text):
                self._counts[form][feat] += 1
                self._totals[form] += 1
                self._vocabulary.add(feat)
        return self

    @property
    def forms(self) -> list[str]:
        return sorted(self._counts)

    def log_scores(self, text: str) -> tuple[dict[str, float], int]:
        feats = self.features(text)
        vocab = len(self._vocabulary) + 1
        scores = {}
        for form in self.forms:
            counts, total = self._counts[form], self._totals[form]
            denominator = math.log(total + self.alpha * vocab)
            scores[form] = sum(math.log(counts.get(f, 0) + self.alpha) - denominator for f in feats)
        return scores, len(feats)


class LanguageDetector:
    """Detects the language of one message, given the conversation's language so far."""

    # Average log-likelihood lead per feature that makes a Latin guess decisive.
    MIN_MARGIN_PER_FEATURE = 0.08

    def __init__(self, model: LatinNaiveBayes) -> None:
        self._model = model

    @classmethod
    def from_nlu_data(cls, nlu_dir: Path = NLU_DATA_DIR) -> "LanguageDetector":
        return cls(LatinNaiveBayes().fit(_load_examples(nlu_dir)))

    def detect(self, text: str, previous: str | None = None) -> LanguageGuess:
        guess = self._detect_alone(text)
        if guess.confident or previous is None:
            return guess
        return LanguageGuess(
            language=previous,
            form=previous,
            dialect=None,
            confident=False,
            reason=f"kept conversation language ({guess.reason})",
            scores=guess.scores,
        )

    def _detect_alone(self, text: str) -> LanguageGuess:
        folded = normalize_for_matching(text or "")
        if not has_letters(folded):
            return LanguageGuess(None, None, None, False, "no letters")
        arabic = len(_ARABIC_LETTER.findall(folded))
        latin = len(_LATIN_LETTER.findall(folded))
        words = _WORD.findall(folded)
        neutral = bool(words) and all(w in _NEUTRAL_WORDS for w in words)

        if arabic and arabic >= latin / 2:
            darija = any(w in _DARIJA_ARABIC_WORDS or w[1:] in _DARIJA_ARABIC_WORDS for w in words)
            return LanguageGuess(
                "ar", "ar", "darija" if darija else None, not neutral, "arabic script"
            )

        scores, n_feats = self._model.log_scores(folded)
        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        best, best_score = ranked[0]
        margin = (best_score - ranked[1][1]) / max(n_feats, 1)
        digit_cues = sum(
            1
            for w in words
            if _DIGIT_AS_LETTER.search(w) and not _NUMBERISH.match(w) and not (_CODE_LIKE.match(w) and w[-1] not in "379")
        )
        # Digits as letters are the strongest Darija signal there is, unless they
        # are one code ("UPE2A") in a long text in another language.
        darija_digits = digit_cues >= 2 or (digit_cues and digit_cues / len(words) >= 0.08)
        if darija_digits and best != "ary":
            best, reason = "ary", "digits used as letters"
            confident = True
        else:
            reason = f"n-gram model, margin {margin:.3f}"
            confident = margin >= self.MIN_MARGIN_PER_FEATURE or bool(darija_digits and best == "ary")
        if neutral:
            confident = False
            reason = "neutral word(s)"
            default = next((_NEUTRAL_DEFAULTS[w] for w in words if w in _NEUTRAL_DEFAULTS), None)
            if default:
                best = "ary" if default == "ar" else default
        return LanguageGuess(
            reply_language_of(best),
            best,
            "darija" if best == "ary" else None,
            confident,
            reason,
            {form: round(score, 2) for form, score in ranked},
        )


def _load_examples(nlu_dir: Path) -> Iterable[tuple[str, str]]:
    for form in LATIN_FORMS:
        for path in sorted((nlu_dir / form).glob("*.yml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for block in data.get("nlu", []):
                for line in str(block.get("examples", "")).splitlines():
                    line = line.strip()
                    if line.startswith("- "):
                        yield line[2:], form


@lru_cache(maxsize=1)
def default_detector() -> LanguageDetector:
    return LanguageDetector.from_nlu_data()
