"""Subscription topics: which reminders a family asked for (exam periods, orientation, …).

A campaign's ``audience.topics`` reaches only contacts subscribed to one of its topics. A family
subscribes in a conversation ("je veux les rappels des examens", "bghit tfakir dyal l'imtihanat"):
the assistant's opt_in intent records the consent, and the topics *named in that message* are
found here by keywords, in the six language forms; a message naming none ("abonnez-moi",
"اشترك") subscribes to every topic, which is what a family asking for "the reminders" means.
Imports carry a ``topics`` column (``exams;orientation``).

A family stops one kind of reminder the same way: an opt-out that names topics ("je ne veux plus
les rappels des examens", "bghit nwa9ef tfakir dyal l'imtihanat") stops only those, and the
others go on; an opt-out naming none ("STOP") is the global opt-out (jisr/consent.py).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

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


# Words that name the registration deadlines in a request for reminders, but the subscription
# itself in a request to stop: "annuler mon inscription", "إلغاء التسجيل", "cancelar mi
# inscripción" stop everything. Reading such a stop as "only the deadline reminders" would keep
# messaging a family that asked for none; the other way round a family loses reminders it can
# ask for again (START), and is told so.
_SUBSCRIPTION_WORDS = frozenset({"inscription", "inscripcion", "iscrizion", "anmeldung", "tasjil", "تسجيل", "التسجيل"})


def _patterns(words: dict[str, tuple[str, ...]]) -> dict[str, re.Pattern[str]]:
    return {
        topic: re.compile(r"(?<![\w])(?:" + "|".join(re.escape(_fold(k)) for k in keys) + r")", re.UNICODE)
        for topic, keys in words.items()
        if keys
    }


_PATTERNS = _patterns(_KEYWORDS)
_STOP_PATTERNS = _patterns({topic: tuple(k for k in words if k not in _SUBSCRIPTION_WORDS) for topic, words in _KEYWORDS.items()})


def _named(text: str, patterns: dict[str, re.Pattern[str]]) -> tuple[str, ...]:
    """"l'" and Arabic "ال"/"و" prefixes are words of their own here, so "l'imtihanat" and
    "والتوجيه" are found."""
    folded = _fold(text).replace("'", " ").replace("’", " ")
    folded = re.sub(r"(?<![\w])و?ال", " ال", folded)  # "والتوجيه" → " التوجيه", keeping the ال the keywords may start with
    bare = folded.replace(" ال", " ")
    return tuple(t for t in SUBSCRIPTION_TOPICS if t in patterns and (patterns[t].search(folded) or patterns[t].search(bare)))


def topics_in(text: str) -> tuple[str, ...]:
    """The topics a message names, in SUBSCRIPTION_TOPICS order (none: an empty tuple)."""
    return _named(text, _PATTERNS)


def subscribed_topics(text: str) -> tuple[str, ...]:
    """What an opt-in message subscribes to: the topics it names, or every topic when it names none."""
    return topics_in(text) or SUBSCRIPTION_TOPICS


# "Stop everything, the exam reminders too": a stop that says "all" is the global opt-out,
# whatever topics it names (the same reasoning as _SUBSCRIPTION_WORDS: never keep messaging a
# family that asked for nothing more).
_EVERYTHING = re.compile(
    r"(?<![\w])و?(?:tout|tous|toutes|todo|todos|todas|tutto|tutti|tutte|alles|alle|kolchi|kulchi|ga3|كل|كلشي|جميع|الجميع|كاملين)(?![\w])"
)


def unsubscribed_topics(text: str) -> tuple[str, ...]:
    """What an opt-out message stops: the topics it names (registration words aside, see
    _SUBSCRIPTION_WORDS); none, or "all", means every reminder: the global opt-out."""
    if _EVERYTHING.search(_fold(text)):
        return ()
    return _named(text, _STOP_PATTERNS)


@dataclass(frozen=True)
class TopicStop:
    """What stopping some topics does to a family's reminders (both in SUBSCRIPTION_TOPICS order)."""

    stopped: tuple[str, ...]   # the topics the message named
    kept: tuple[str, ...]      # the topics whose reminders continue


def stop_topics(held: Iterable[str], named: Iterable[str]) -> TopicStop:
    """The topics ``named`` stop out of those ``held``: one rule for what is recorded
    (ContactStore.stop_topics) and what the family is told (actions/subscription.py)."""
    named_set, held_set = set(named), set(held)
    stopped = tuple(t for t in SUBSCRIPTION_TOPICS if t in named_set)
    return TopicStop(stopped, tuple(t for t in SUBSCRIPTION_TOPICS if t in held_set and t not in named_set))


def reaches(campaign_topics: Iterable[str], held: Iterable[str], stopped: Iterable[str]) -> bool:
    """Does a campaign about ``campaign_topics`` reach a contact holding ``held`` topics, having
    stopped ``stopped``? (The contact's consent is checked apart.) The one rule, used when
    planning (campaigns.definitions.Audience) and again at send time (campaigns.sending.prepare):

    - a campaign naming no topic is general: it reaches every consenting contact;
    - a contact that chose topics gets the campaigns about one of them;
    - a contact that never chose (it asked for "the reminders", or came from a list without a
      topics column) and never stopped one gets every topic's reminders;
    - a contact holding no topic but having stopped some gets none: it stopped everything it
      held. (A contact that never chose and stops one topic is recorded as holding all the
      others: ContactStore.stop_topics.) This is ContactStore.reminder_topics' rule too; once
      it sent such a family every topic but the one it had stopped.
    """
    wanted = set(campaign_topics)
    if not wanted:
        return True
    chosen = set(held)
    if chosen:
        return bool(chosen & wanted)
    return not set(stopped)


def parse_topics(value: str) -> tuple[tuple[str, ...], list[str]]:
    """An import's ``topics`` field ("exams;orientation", commas or spaces also separate):
    (known topics, unknown names)."""
    names = [n for n in re.split(r"[;,\s]+", value.strip().lower()) if n]
    known = tuple(dict.fromkeys(n for n in names if n in SUBSCRIPTION_TOPICS))
    return known, [n for n in names if n not in SUBSCRIPTION_TOPICS]
