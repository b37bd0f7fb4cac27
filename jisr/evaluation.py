"""`jisr eval`: how well Jisr understands messages it never saw, beside the baselines.

On the held-out set (tests/heldout/, never used for training) it measures,
per language form, in one run:
- intent accuracy and macro-F1 of Jisr's model, and of Rasa's default
  pipeline (bot/config.baseline.yml, as `rasa init` writes it) trained on the
  same NLU data;
- language identification accuracy of Jisr's detector and of raw langdetect.
A message is expected to be identified as Arabic when written in Darija
(either script): Jisr answers Darija speakers in Arabic.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from jisr.assistant.runtime import top_intent
from jisr.paths import HELDOUT_DIR, LANGUAGE_FORMS, reply_language_of

@dataclass(frozen=True)
class HeldOutMessage:
    form: str
    text: str
    intent: str


def load_heldout(directory: Path = HELDOUT_DIR) -> list[HeldOutMessage]:
    messages: list[HeldOutMessage] = []
    for form in LANGUAGE_FORMS:
        path = directory / f"{form}.yml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for item in data["messages"]:
            messages.append(HeldOutMessage(form, str(item["text"]), str(item["intent"])))
    return messages


def accuracy(expected: list[str], predicted: list[str]) -> float:
    return sum(e == p for e, p in zip(expected, predicted)) / max(len(expected), 1)


def macro_f1(expected: list[str], predicted: list[str]) -> float:
    """Mean F1 over the intents present in ``expected`` (each intent weighs the same)."""
    labels = sorted(set(expected))
    scores = []
    for label in labels:
        tp = sum(e == label and p == label for e, p in zip(expected, predicted))
        fp = sum(e != label and p == label for e, p in zip(expected, predicted))
        fn = sum(e == label and p != label for e, p in zip(expected, predicted))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / max(len(scores), 1)


@dataclass
class SystemScores:
    """One system's predictions on the held-out set."""

    name: str
    intents: list[str] = field(default_factory=list)
    languages: list[str | None] = field(default_factory=list)


@dataclass
class EvaluationReport:
    messages: list[HeldOutMessage]
    systems: dict[str, SystemScores]
    timings: dict[str, float]

    def _rows(self) -> list[tuple[str, list[int]]]:
        rows = [(form, [i for i, m in enumerate(self.messages) if m.form == form]) for form in LANGUAGE_FORMS]
        rows.append(("all", list(range(len(self.messages)))))
        return rows

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"messages": len(self.messages), "timings_s": self.timings, "forms": {}}
        for form, idx in self._rows():
            entry: dict[str, Any] = {"n": len(idx)}
            gold_intents = [self.messages[i].intent for i in idx]
            gold_langs = [reply_language_of(self.messages[i].form) for i in idx]
            for key, system in self.systems.items():
                if system.intents:
                    predicted = [system.intents[i] for i in idx]
                    entry[f"{key}_intent_accuracy"] = round(accuracy(gold_intents, predicted), 4)
                    entry[f"{key}_intent_macro_f1"] = round(macro_f1(gold_intents, predicted), 4)
                if system.languages:
                    predicted_langs = [system.languages[i] or "" for i in idx]
                    entry[f"{key}_language_accuracy"] = round(accuracy(gold_langs, predicted_langs), 4)
            result["forms"][form] = entry
        return result

    def as_table(self) -> str:
        data = self.as_dict()
        columns = [
            ("jisr_intent_accuracy", "Jisr intent acc"),
            ("jisr_intent_macro_f1", "Jisr macro-F1"),
            ("baseline_intent_accuracy", "Rasa default acc"),
            ("baseline_intent_macro_f1", "Rasa default F1"),
            ("jisr_language_accuracy", "Jisr lang-id"),
            ("langdetect_language_accuracy", "langdetect lang-id"),
        ]
        present = [(k, title) for k, title in columns if k in data["forms"]["all"]]
        header = "| form | n | " + " | ".join(title for _, title in present) + " |"
        lines = [header, "|" + "---|" * (len(present) + 2)]
        for form, entry in data["forms"].items():
            cells = [f"{entry[k] * 100:.1f}%" for k, _ in present]
            lines.append(f"| {form} | {entry['n']} | " + " | ".join(cells) + " |")
        timing = ", ".join(f"{k}: {v:.1f} s" for k, v in self.timings.items())
        return "\n".join(lines) + f"\n\n{len(self.messages)} held-out messages; {timing}"

    def errors(self, system: str = "jisr") -> Iterable[tuple[HeldOutMessage, str]]:
        for message, predicted in zip(self.messages, self.systems[system].intents):
            if message.intent != predicted:
                yield message, predicted


def _predict_intents(model_path: Path, texts: list[str]) -> list[str]:
    from rasa.core.agent import Agent

    from jisr.assistant.model import quiet_rasa

    quiet_rasa()
    agent = Agent.load(str(model_path))

    async def parse_all() -> list[str]:
        return [str(top_intent(await agent.parse_message(text))[0]) for text in texts]

    return asyncio.run(parse_all())


def _langdetect_predictor() -> Callable[[str], str | None]:
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect is random unless seeded

    def predict(text: str) -> str | None:
        try:
            return detect(text)
        except LangDetectException:
            return None

    return predict


def run_evaluation(with_baseline: bool = True) -> EvaluationReport:
    from jisr.assistant.model import BASELINE_CONFIG, ensure_model
    from jisr.language.detector import default_detector

    messages = load_heldout()
    texts = [m.text for m in messages]
    timings: dict[str, float] = {}
    systems: dict[str, SystemScores] = {}

    started = time.monotonic()
    model = ensure_model()
    timings["jisr_training"] = model.seconds
    detector = default_detector()
    systems["jisr"] = SystemScores(
        "Jisr",
        intents=_predict_intents(model.path, texts),
        languages=[detector.detect(t).language for t in texts],
    )
    timings["jisr_total"] = time.monotonic() - started

    predict_language = _langdetect_predictor()
    systems["langdetect"] = SystemScores("langdetect", languages=[predict_language(t) for t in texts])

    if with_baseline:
        started = time.monotonic()
        baseline = ensure_model(BASELINE_CONFIG, core=False)
        timings["baseline_training"] = baseline.seconds
        systems["baseline"] = SystemScores("Rasa default pipeline", intents=_predict_intents(baseline.path, texts))
        timings["baseline_total"] = time.monotonic() - started
    return EvaluationReport(messages, systems, timings)
