"""Where the project's data lives. Jisr runs from its source tree (an editable install)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BOT_DIR = PROJECT_ROOT / "bot"
NLU_DATA_DIR = PROJECT_ROOT / "nlu_data"
CONTENT_DIR = PROJECT_ROOT / "content"
MODELS_DIR = BOT_DIR / "models"
HELDOUT_DIR = PROJECT_ROOT / "tests" / "heldout"
# Local state (SQLite file, embedded Redis, caches) that is never committed.
VAR_DIR = PROJECT_ROOT / "var"

LANGUAGE_FORMS = ("ar", "ary", "fr", "es", "it", "de")
REPLY_LANGUAGES = ("ar", "fr", "es", "it", "de")


def date_locale(language: str) -> str:
    """The Babel locale for dates in a reply language: Moroccan Arabic month names for Arabic
    (دجنبر, غشت, شتنبر, as the reply texts write them, not ديسمبر, أغسطس, سبتمبر); French
    for a language Jisr does not answer in."""
    if language not in REPLY_LANGUAGES:
        return "fr"
    return "ar_MA" if language == "ar" else language


def reply_language_of(form: str) -> str:
    """Darija in Latin letters is answered in Arabic (with an offer of French)."""
    return "ar" if form == "ary" else form
