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
