"""Public holidays: the data files (content/calendars/public_holidays/) are complete and right, and
the mediators' working hours skip them, so a family writing on a holiday is told the next working
day in its own language. No stack: the real content files, the real loaders, the real reply texts.

The Easter-based dates are checked against dateutil's Easter computation and the lunar ones
against the arithmetical (tabular) Islamic calendar: two computations independent of the data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path

import pytest
import yaml
from dateutil.easter import easter

from jisr.content import default_reply_book
from jisr.holidays import HOLIDAY_DIR, HolidayBook, HolidayError, load_holiday_year
from jisr.mediation.config import CONFIG_PATH, MediationConfig, MediationConfigError, default_config
from jisr.mediation.hours import eta, eta_text, family_zone, next_shift_start, open_now, working_day

UTC = dt.timezone.utc
REPLIES = default_reply_book()
COUNTRIES = ("FR", "ES", "IT", "DE", "BE", "NL", "DZ", "CI")
SCHOOL_YEAR = "2026-27"
YEAR_START, YEAR_END = dt.date(2026, 9, 1), dt.date(2027, 8, 31)


def local(country: str, *when: int) -> dt.datetime:
    """An aware time in the country's mediators' zone."""
    return dt.datetime(*when, tzinfo=default_config().hours(country).zone)


def notice(country: str, language: str, now: dt.datetime) -> str:
    config = default_config()
    hours = config.hours(country)
    return eta_text(REPLIES, language, eta(hours, now, config.expected_response), family_zone(None, hours), now)


# --- the data ------------------------------------------------------------------------------------


def test_every_country_has_complete_public_holidays_for_the_school_year():
    book = HolidayBook.from_dir()
    configured = set(default_config().hours_by_country)
    assert configured == set(COUNTRIES)
    for country in COUNTRIES:
        year = book.year(country, SCHOOL_YEAR)
        assert year is not None, f"no content/calendars/public_holidays/{country.lower()}-{SCHOOL_YEAR}.yml"
        assert len(year.holidays) >= 8, f"{country}: only {len(year.holidays)} holidays"
        for holiday in year.holidays:
            assert holiday.name.strip() and holiday.source.startswith("https://"), (country, holiday)
            assert YEAR_START <= holiday.day <= YEAR_END, (country, holiday)
            assert holiday.reviewed <= dt.date.today(), (country, holiday)
        # Every country closes on New Year's Day, and all but the Netherlands on 1 May.
        assert dt.date(2027, 1, 1) in book.days_off(country), country
        assert (dt.date(2027, 5, 1) in book.days_off(country)) == (country != "NL"), country


def test_the_school_year_under_way_is_covered():
    """From 1 September a new year's files are needed, or holidays stop counting: this test says so."""
    today = dt.date.today()
    first = today.year if today >= dt.date(today.year, 9, 1) else today.year - 1
    school_year = f"{first}-{(first + 1) % 100:02d}"
    book = HolidayBook.from_dir()
    missing = [c for c in COUNTRIES if book.year(c, school_year) is None]
    assert not missing, f"add content/calendars/public_holidays/<country>-{school_year}.yml for {missing}"


def test_every_file_is_raw_yaml_a_non_programmer_can_edit_and_the_loader_accepts():
    for path in sorted(HOLIDAY_DIR.glob("*.yml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        for entry in raw["holidays"]:
            assert {"date", "name", "source", "reviewed"} <= set(entry), (path.name, entry)
        assert len(load_holiday_year(path).holidays) == len(raw["holidays"])


# Days after Easter Sunday that are national holidays (NL's Good Friday is listed but worked).
EASTER_OFFSETS = {
    "FR": {1, 39, 50},
    "DE": {-2, 1, 39, 50},
    "BE": {1, 39, 50},
    "NL": {1, 39, 50},
    "IT": {1},
    "ES": {-2},
    "CI": {1, 39, 50},
    "DZ": set(),
}


def test_easter_based_holidays_follow_easter_2027():
    sunday = easter(2027)
    assert sunday == dt.date(2027, 3, 28)
    book = HolidayBook.from_dir()
    for country, offsets in EASTER_OFFSETS.items():
        expected = {sunday + dt.timedelta(days=d) for d in offsets}
        assert expected <= book.days_off(country), (country, sorted(expected - book.days_off(country)))
        # Good Friday, Easter Monday, Ascension and Whit Monday where (and only where) they are national.
        for offset in {-2, 1, 39, 50} - offsets:
            day = sunday + dt.timedelta(days=offset)
            assert not any(h.day == day and h.day_off and not h.expected for h in book.year(country, SCHOOL_YEAR).holidays), (country, day)
    nl = {h.day: h for h in book.year("NL", SCHOOL_YEAR).holidays}
    assert nl[sunday - dt.timedelta(days=2)].day_off is False  # Goede Vrijdag: usually worked


def tabular_hijri(year: int, month: int, day: int) -> dt.date:
    """The arithmetical Islamic calendar (civil epoch): within a day or two of the announced dates."""
    julian_day = day + math.ceil(29.5 * (month - 1)) + (year - 1) * 354 + (3 + 11 * year) // 30 + 1948439.5 - 1
    return dt.date.fromordinal(int(julian_day - 1721424.5))


# Each expected (lunar) holiday: its Hijri date.
LUNAR = {
    "DZ": {
        dt.date(2027, 3, 9): (1448, 10, 1), dt.date(2027, 3, 10): (1448, 10, 2), dt.date(2027, 3, 11): (1448, 10, 3),
        dt.date(2027, 5, 16): (1448, 12, 10), dt.date(2027, 5, 17): (1448, 12, 11), dt.date(2027, 5, 18): (1448, 12, 12),
        dt.date(2027, 6, 6): (1449, 1, 1), dt.date(2027, 6, 15): (1449, 1, 10), dt.date(2027, 8, 14): (1449, 3, 12),
    },
    "CI": {
        dt.date(2027, 3, 6): (1448, 9, 27), dt.date(2027, 3, 9): (1448, 10, 1),
        dt.date(2027, 5, 16): (1448, 12, 10), dt.date(2027, 5, 17): (1448, 12, 11), dt.date(2027, 8, 14): (1449, 3, 12),
    },
}


def test_lunar_holidays_are_marked_expected_and_close_to_the_islamic_calendar():
    book = HolidayBook.from_dir()
    for country in COUNTRIES:
        expected = {h.day for h in book.year(country, SCHOOL_YEAR).holidays if h.expected}
        assert expected == set(LUNAR.get(country, {})), country
        for day, hijri in LUNAR.get(country, {}).items():
            assert abs((tabular_hijri(*hijri) - day).days) <= 2, (country, day, hijri, tabular_hijri(*hijri))


# --- the working hours ---------------------------------------------------------------------------


def test_christmas_day_in_france_and_germany_sends_the_family_to_monday():
    config = default_config()
    christmas = local("FR", 2026, 12, 25, 10, 0)  # a Friday
    for country in ("FR", "DE"):
        hours = config.hours(country)
        assert not open_now(hours, christmas)
        assert next_shift_start(hours, christmas) == local(country, 2026, 12, 28, 9, 0)
        # Without the holidays the same Friday morning was "within about 2 hours".
        assert eta(dataclasses.replace(hours, days_off=frozenset()), christmas, config.expected_response).kind == "within"
    # 26 December: a holiday in Germany, not in France (Alsace-Moselle only); a Saturday in 2026 anyway.
    assert dt.date(2026, 12, 26) in config.hours("DE").days_off and dt.date(2026, 12, 26) not in config.hours("FR").days_off
    for language, monday in {"fr": "lundi", "ar": "الاثنين", "es": "el lunes", "de": "Montag", "it": "lunedì"}.items():
        text = notice("FR", language, christmas)
        assert f"{monday} " in text and "09:00" in text, (language, text)


def test_first_of_november_in_algeria_is_a_sunday_off_and_the_family_hears_tomorrow():
    config = default_config()
    sunday = local("DZ", 2026, 11, 1, 10, 0)
    assert sunday.weekday() == 6 and 6 in config.hours("DZ").days  # Algeria works Sunday to Thursday
    assert not open_now(config.hours("DZ"), sunday)
    assert next_shift_start(config.hours("DZ"), sunday) == local("DZ", 2026, 11, 2, 9, 0)
    for language in ("fr", "ar", "es", "de"):
        text = notice("DZ", language, sunday)
        assert REPLIES.raw("handoff_days", language)["tomorrow"] in text and "09:00" in text, (language, text)
    # A family of the Algerian team living in Paris hears the same shift in its own time (09:00 there too in November).
    when = eta(config.hours("DZ"), sunday, config.expected_response)
    assert "09:00" in eta_text(REPLIES, "ar", when, family_zone("Europe/Paris", config.hours("DZ")), sunday)


@pytest.mark.parametrize("country", ["BE", "NL", "DE", "FR", "IT", "CI"])
def test_easter_monday_is_off_and_tuesday_is_promised(country):
    config = default_config()
    monday = local(country, 2027, 3, 29, 10, 0)
    start = next_shift_start(config.hours(country), monday)
    assert not open_now(config.hours(country), monday)
    assert start.date() == dt.date(2027, 3, 30) and start.time() == config.hours(country).start


def test_easter_monday_is_a_working_day_in_spain_and_algeria():
    config = default_config()
    for country in ("ES", "DZ"):
        assert open_now(config.hours(country), local(country, 2027, 3, 29, 10, 0)), country


def test_kings_day_closes_the_netherlands_only():
    config = default_config()
    kings_day = local("NL", 2027, 4, 27, 11, 0)  # a Tuesday
    assert not open_now(config.hours("NL"), kings_day)
    assert next_shift_start(config.hours("NL"), kings_day) == local("NL", 2027, 4, 28, 9, 0)
    for language in ("fr", "ar", "es", "de"):
        assert REPLIES.raw("handoff_days", language)["tomorrow"] in notice("NL", language, kings_day), language
    assert eta(config.hours("BE"), kings_day, config.expected_response).kind == "within"
    # Good Friday is an official Dutch holiday marked day_off: false: the mediators work.
    assert open_now(config.hours("NL"), local("NL", 2027, 3, 26, 11, 0))
    assert not open_now(config.hours("DE"), local("DE", 2027, 3, 26, 11, 0))


def test_eid_al_adha_in_algeria_skips_three_days_and_names_the_weekday():
    config = default_config()
    thursday_evening = local("DZ", 2027, 5, 13, 18, 0)  # Friday and Saturday: weekend; 16-18 May: Eid
    start = next_shift_start(config.hours("DZ"), thursday_evening)
    assert start == local("DZ", 2027, 5, 19, 9, 0)
    assert not working_day(config.hours("DZ"), dt.date(2027, 5, 16))
    words = {"fr": "mercredi", "ar": "الأربعاء", "es": "el miércoles", "de": "Mittwoch"}
    for language, word in words.items():
        assert word in notice("DZ", language, thursday_evening), language


def test_a_closure_of_more_than_a_week_names_the_date_not_just_the_weekday(tmp_path: Path):
    """Holidays can make "Monday" ambiguous (which Monday?): from 7 days ahead the date is said."""
    closure = [dt.date(2026, 12, 21) + dt.timedelta(days=n) for n in range(12)]  # 21 Dec to 1 Jan
    (tmp_path / "fr-2026-27.yml").write_text(
        yaml.safe_dump(
            {
                "country": "FR",
                "school_year": "2026-27",
                "holidays": [{"date": d, "name": f"Fermeture {d}", "source": "https://example.org/closure", "reviewed": dt.date(2026, 12, 1)} for d in closure],
            }
        ),
        encoding="utf-8",
    )
    data = yaml.safe_load(CONFIG_PATH.read_text(encoding="utf-8"))
    config = MediationConfig.from_mapping(data, holidays=HolidayBook.from_dir(tmp_path))
    hours = config.hours("FR")
    friday = dt.datetime(2026, 12, 18, 19, 0, tzinfo=hours.zone)
    when = eta(hours, friday, config.expected_response)
    assert when.at == dt.datetime(2027, 1, 4, 9, 0, tzinfo=hours.zone)
    dates = {"fr": "lundi 4 janvier", "ar": "الاثنين 4 يناير", "es": "el lunes 4 de enero", "de": "Montag, 4. Januar", "it": "lunedì 4 gennaio"}
    for language, words in dates.items():
        assert words in eta_text(REPLIES, language, when, family_zone(None, hours), friday), language
    # The default hours follow the French holidays (holidays: FR in content/mediation.yml).
    assert config.default_hours.days_off == hours.days_off


# --- wrong files are refused with the field named ------------------------------------------------------


def write_year(directory: Path, text: str, name: str = "fr-2026-27.yml") -> Path:
    path = directory / name
    path.write_text("country: FR\nschool_year: 2026-27\nholidays:\n" + text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "entry, message",
    [
        ('  - {date: 2027-01-12, name: Yennayer, Nouvel An, source: "https://x.dz/", reviewed: 2026-12-05}\n', "needs quotes"),
        ('  - {date: 2027-09-01, name: Rentrée, source: "https://x.fr/", reviewed: 2026-12-05}\n', "outside school year 2026-27"),
        ("  - {date: 2026-12-25, name: Noël, reviewed: 2026-12-05}\n", "missing field 'source'"),
        ('  - {date: 2026-12-25, name: Noël, source: "https://x.fr/"}\n', "missing field 'reviewed'"),
        ('  - {date: 2026-12-25, name: Noël, source: service-public, reviewed: 2026-12-05}\n', "official page"),
        ('  - {date: 25/12/2026, name: Noël, source: "https://x.fr/", reviewed: 2026-12-05}\n', "not a date"),
        ('  - {date: 2026-12-25, name: Noël, source: "https://x.fr/", reviewed: 2026-12-05, expected: maybe}\n', "true or false"),
    ],
)
def test_a_wrong_holiday_entry_is_refused_with_the_field_named(tmp_path: Path, entry: str, message: str):
    path = write_year(tmp_path, entry)
    with pytest.raises(HolidayError, match=message) as raised:
        load_holiday_year(path)
    assert str(path) in str(raised.value)


def test_a_file_whose_name_and_content_disagree_is_refused(tmp_path: Path):
    with pytest.raises(HolidayError, match="must match the file name"):
        load_holiday_year(write_year(tmp_path, "  []\n", name="de-2026-27.yml"))
    with pytest.raises(HolidayError, match="named <country>"):
        load_holiday_year(write_year(tmp_path, "  []\n", name="france.yml"))


def test_default_hours_naming_an_unknown_holiday_country_are_refused():
    data = yaml.safe_load(CONFIG_PATH.read_text(encoding="utf-8"))
    data["working_hours"]["default"] = {**data["working_hours"]["default"], "holidays": "XX"}
    with pytest.raises(MediationConfigError, match="working_hours.default.holidays"):
        MediationConfig.from_mapping(data)

