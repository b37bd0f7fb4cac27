"""Subscription topics: which reminders a family asked for (exam periods, orientation, …).

A campaign's ``audience.topics`` reaches only contacts subscribed to one of its topics. A family
subscribes in a conversation ("je veux les rappels des examens", "bghit tfakir dyal l'imtihanat"):
the assistant's opt_in intent records the consent, and the topics *named in that message* are
found here by keywords, in the six language forms; a message naming none ("abonnez-moi",
"اشترك") subscribes to every topic, which is what a family asking for "the reminders" means.
Imports carry a ``topics`` column (``exams;orientation``).
"""

from __future__ import annotations

import re
import unicodedata

SUBSCRIPTION_TOPICS = ("school_start", "exams", "deadlines", "orientation", "programmes", "tutoring")

# Word starts per topic, in fr, es, it, de, en, Darija in Latin letters (ary) and Arabic (ar/ary),
# matched at the start of a word after lowercasing and removing accents (so "examens",
# "exámenes", "Prüfungen", "l'imtihanat", "الامتحانات" all find "exams").
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "school_start": ("rentree", "vuelta al cole", "inicio de curso", "inizio della scuola", "inizio scuola", "rientro",
                     "schulanfang", "schulbeginn", "schulstart", "school start", "dkhla", "dokhoul", "dkhoul",
                     "الدخول المدرسي", "الدخول", "الدخلة"),
    "exams": ("exam", "examen", "esam", "prufung", "abitur", "bac", "selectividad", "maturita", "brevet", "imti", "mti7an", "imti7an",
              "امتحان", "الامتحان", "امتحانات", "الامتحانات", "الباك"),
    "deadlines": ("deadline", "date limite", "dates limites", "plazo", "scadenz", "frist", "inscription", "inscripcion", "iscrizion",
                  "anmeldung", "tasjil", "تسجيل", "التسجيل", "آجال", "الآجال", "أجل"),
    "orientation": ("orientation", "orientacion", "orientamento", "berufsorientierung", "orientierung", "tawjih", "twjih",
                    "توجيه", "التوجيه"),
    "programmes": ("programme", "programa", "program", "filiere", "formation", "studiengang", "corso", "corsi", "chou3ba", "برنامج",
                   "برامج", "البرامج", "شعبة", "الشعب"),
    "tutoring": ("soutien", "tutorat", "cours particulier", "refuerzo", "clases particulares", "ripetizion", "doposcuola",
                 "nachhilfe", "tutoring", "dourous", "lmraja3a", "دعم", "الدعم", "دروس", "الدروس"),
}


def _fold(text: str) -> str:
    """Lowercase without accents (Latin letters only: Arabic is kept as written)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


_PATTERNS = {
    topic: re.compile(r"(?<![\w])(?:" + "|".join(re.escape(_fold(k)) for k in words) + r")", re.UNICODE)
    for topic, words in _KEYWORDS.items()
}


def topics_in(text: str) -> tuple[str, ...]:
    """The topics a message names, in SUBSCRIPTION_TOPICS order (none: an empty tuple).

    "l'" and Arabic "ال"/"و" prefixes are words of their own here, so "l'imtihanat" and
    "والتوجيه" are found."""
    folded = _fold(text).replace("'", " ").replace("’", " ")
    folded = re.sub(r"(?<![\w])و?ال", " ال", folded)  # "والتوجيه" → " التوجيه", keeping the ال the keywords may start with
    return tuple(topic for topic in SUBSCRIPTION_TOPICS if _PATTERNS[topic].search(folded) or _PATTERNS[topic].search(folded.replace(" ال", " ")))


def subscribed_topics(text: str) -> tuple[str, ...]:
    """What an opt-in message subscribes to: the topics it names, or every topic when it names none."""
    return topics_in(text) or SUBSCRIPTION_TOPICS


def parse_topics(value: str) -> tuple[tuple[str, ...], list[str]]:
    """An import's ``topics`` field ("exams;orientation", commas or spaces also separate):
    (known topics, unknown names)."""
    names = [n for n in re.split(r"[;,\s]+", value.strip().lower()) if n]
    known = tuple(dict.fromkeys(n for n in names if n in SUBSCRIPTION_TOPICS))
    return known, [n for n in names if n not in SUBSCRIPTION_TOPICS]
