import pytest

from jisr.nlu.entities import default_gazetteer


@pytest.mark.parametrize(
    "text, country",
    [
        ("on habite en belgique", "BE"),
        ("salam, wldi f 3eme f lfransa", "FR"),
        ("ولدي كيقرا ففرنسا", "FR"),
        ("نحن نعيش في إسبانيا", "ES"),
        ("vivimos en Villanueva del Rio", None),  # unknown place: no guess rather than a wrong one
        ("vivimos en Madrid", "ES"),
        ("siamo a Torino da due anni", "IT"),
        ("wir wohnen in München", "DE"),
        ("we zijn in rotterdam", "NL"),
        ("ana f dzayer", "DZ"),
        ("nous sommes à Abidjan", "CI"),
        ("we moved to Belgium", "BE"),
    ],
)
def test_countries_in_every_language_form(text, country):
    assert default_gazetteer().first_value(text, "country") == country


@pytest.mark.parametrize(
    "text, level",
    [
        ("mon fils est en 3eme", "lower_secondary"),
        ("wldi f 3eme", "lower_secondary"),
        ("mi hija está en 4º ESO", "lower_secondary"),
        ("mio figlio fa la terza media", "lower_secondary"),
        ("meine tochter ist in der 4. klasse", "primary"),
        ("بنتي فالثانوي", "upper_secondary"),
        ("ma fille est en terminale", "upper_secondary"),
        ("c'est quand le bac", None),  # an exam is not the child's level
        ("il a fait une seconde de retard", None),
    ],
)
def test_school_levels(text, level):
    assert default_gazetteer().first_value(text, "school_level") == level


def test_several_entities_in_reading_order():
    found = default_gazetteer().find("salam, wldi f 3eme f lfransa")
    assert [(m.entity, m.value) for m in found] == [
        ("role", "parent"),
        ("school_level", "lower_secondary"),
        ("country", "FR"),
    ]


@pytest.mark.parametrize(
    "text, language",
    [("parle moi en arabe", "ar"), ("auf deutsch bitte", "de"), ("jawbni b darija", "ar"), ("بالفرنسية من فضلك", "fr"), ("en español por favor", "es")],
)
def test_language_names(text, language):
    assert default_gazetteer().find(text, only=["language_name"])[-1].value == language


@pytest.mark.parametrize(
    "text, region",
    [("wir wohnen in München", "DE-BY"), ("vivimos en Badalona", "ES-CT"), ("siamo a Bergamo", "IT-lombardia"), ("on vit à Liège", "BE-fwb"), ("we wonen in Utrecht", "NL-midden")],
)
def test_regions_whose_calendars_differ(text, region):
    assert default_gazetteer().first_value(text, "region") == region


def test_morocco_is_the_origin_not_the_host_country():
    assert default_gazetteer().first_value("mi hijo ha llegado de marruecos en marzo", "country") is None


def _every_text() -> list[str]:
    """The training examples and the held-out messages of the six language forms."""
    import re

    import yaml

    from jisr.bench.gateway import load_messages
    from jisr.paths import PROJECT_ROOT

    texts = [text for _, text in load_messages()]
    for path in sorted((PROJECT_ROOT / "nlu_data").rglob("*.yml")):
        for block in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("nlu") or []:
            for line in str(block.get("examples") or "").splitlines():
                texts.append(re.sub(r"\[([^\]]+)\]\([^)]*\)|\[([^\]]+)\]\{[^}]*\}", lambda m: m.group(1) or m.group(2), line.lstrip("- ")))
    return texts


def test_skipping_patterns_by_their_first_word_finds_exactly_what_running_all_of_them_finds():
    """Gazetteer.find skips a pattern whose term's first word is not in the message: it must
    never lose a match (all training examples and held-out messages, every entity type)."""
    from jisr.text import normalize_for_matching

    gazetteer = default_gazetteer()
    texts = _every_text()
    assert len(texts) > 2000
    found = 0
    for text in texts:
        folded = normalize_for_matching(text)
        fast = gazetteer._candidates(folded, None)
        assert fast == gazetteer._candidates(folded, None, skip_by_needle=False), text
        found += len(fast)
    assert found > 1000  # the texts do name countries, levels, regions…
