"""Jisr's own Rasa NLU components, referenced by module path in ``bot/config.yml``.

Importing this module registers them with Rasa's default recipe; it must stay
cheap to import (no I/O until a component is created).
"""

from __future__ import annotations

from typing import Any, Dict, List, Text

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.extractors.extractor import EntityExtractorMixin
from rasa.nlu.tokenizers.tokenizer import Token
from rasa.nlu.tokenizers.whitespace_tokenizer import WhitespaceTokenizer
from rasa.shared.nlu.constants import ENTITIES, TEXT
from rasa.shared.nlu.training_data.message import Message

from jisr.nlu.entities import default_gazetteer
from jisr.text import normalize_for_matching


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.MESSAGE_TOKENIZER, is_trainable=False)
class NormalizingTokenizer(WhitespaceTokenizer):
    """Whitespace tokens with folded spelling, so "école", "ecole" and "ECOLE" are one feature.

    Offsets still point into the original text; only the token's text (what
    the featurizers read) is folded: case, accents, Arabic hamza seats, taa
    marbuta, alif maqsura, diacritics, letter elongation ("merciiii").
    """

    def tokenize(self, message: Message, attribute: Text) -> List[Token]:
        tokens = super().tokenize(message, attribute)
        for token in tokens:
            folded = normalize_for_matching(token.text) or token.text
            token.text = folded
            token.lemma = folded
        return tokens


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR, is_trainable=False)
class GazetteerEntityExtractor(GraphComponent, EntityExtractorMixin):
    """Adds ``country``, ``school_level``, ``role`` and ``language_name`` entities from content/gazetteer.yml."""

    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        return {}

    @classmethod
    def create(
        cls,
        config: Dict[Text, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> "GazetteerEntityExtractor":
        return cls()

    def process(self, messages: List[Message]) -> List[Message]:
        gazetteer = default_gazetteer()
        for message in messages:
            text = message.get(TEXT) or ""
            found = [m.as_rasa_entity(self.name) for m in gazetteer.find(text)]
            message.set(ENTITIES, message.get(ENTITIES, []) + found, add_to_output=True)
        return messages

    def process_training_data(self, training_data: Any) -> Any:
        return training_data
