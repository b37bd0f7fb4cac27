"""Campaign definitions: the shipped examples, every refusal an operator may meet, rendering.

Invalid campaigns are written to temporary files and must be refused with the
exact "<file>:<line>: <field>: <reason>" an operator will read. Line numbers are
looked up in the test text itself (``line_of``), so each case states which line
the error must point at without hard-coding numbers that shift when the base
campaign changes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import pytest

from campaigns.definitions import (
    CHANNELS,
    MAX_TEXT_CHARS,
    Audience,
    Campaign,
    CampaignError,
    RenderError,
    load_campaign,
    load_campaigns,
    render,
    template_variables,
)
from jisr.calendars import CalendarEvent, default_calendars
from jisr.paths import PROJECT_ROOT, REPLY_LANGUAGES

EXAMPLES_DIR = PROJECT_ROOT / "campaigns" / "examples"
STRATEGY_COUNTRIES = ("FR", "ES", "IT", "DE", "BE", "NL", "DZ", "CI")
# How each language tells a contact they can stop, and how to reach a person.
STOP_WORDS = {"ar": "STOP", "fr": "STOP", "es": "STOP", "it": "STOP", "de": "STOP"}
MEDIATOR_WORDS = {"ar": "«وسيط»", "fr": "« médiateur »", "es": "«mediador»", "it": "«mediatore»", "de": "„Mediator“"}
MAX_EXAMPLE_CHARS = 600
TODAY = dt.date(2026, 8, 1)  # the calendars in content/ are for 2026-27

BASE = """\
id: test_campaign
name: Test campaign
audience:
  countries: [FR, ES]
  languages: [fr, es]
  roles: [parent]
trigger:
  event: school_start
  offset_days: -7
  time: "18:00"
  yearly: true
send_window: {start: "09:00", end: "20:00"}
weekly_cap: 2
fallback_language: fr
messages:
  fr: "Bonjour ! {event_name} : {dates}. Pour arrêter, écrivez STOP."
  es: "¡Hola! {event_name}: {dates}. Para parar, escriba STOP."
whatsapp_template:
  content_sid: HX0123456789abcdef0123456789abcdef
  variables: {1: event_name, 2: dates}
messenger_outside_window: skip
"""


def variant(old: str, new: str, text: str = BASE) -> str:
    """BASE with one fragment replaced; the fragment must be there, once."""
    assert text.count(old) == 1, f"{old!r} is not in the base campaign exactly once"
    return text.replace(old, new)


def line_of(text: str, fragment: str) -> int:
    """1-based number of the first line containing ``fragment``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not found")


def write(tmp_path: Path, text: str, name: str = "campaign.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def event(country: str, event_id: str) -> CalendarEvent:
    calendar = default_calendars().current(country, TODAY)
    assert calendar is not None
    found = calendar.event(event_id)
    assert found is not None, f"{country} has no {event_id}"
    return found


# --- The shipped examples ------------------------------------------------------


@pytest.fixture(scope="module")
def examples() -> dict[str, Campaign]:
    return {c.id: c for c in load_campaigns(EXAMPLES_DIR)}


def test_the_strategy_campaigns_ship_and_validate(examples: dict[str, Campaign]) -> None:
    assert {"school_start_parents", "school_start_students", "exam_period_students", "exam_period_parents"} <= set(examples)
    for path in sorted(EXAMPLES_DIR.glob("*.yml")):
        assert load_campaign(path).path == path  # each file on its own too


@pytest.mark.parametrize(
    "campaign_id, event_id, offset, role",
    [
        ("school_start_parents", "school_start", -7, "parent"),
        ("school_start_students", "school_start", -3, "student"),
        ("exam_period_students", "exam:*", -3, "student"),
        ("exam_period_parents", "exam:*", -1, "parent"),
    ],
)
def test_examples_trigger_as_the_strategy_says(examples: dict[str, Campaign], campaign_id: str, event_id: str, offset: int, role: str) -> None:
    campaign = examples[campaign_id]
    assert campaign.enabled
    assert campaign.trigger.event == event_id
    assert campaign.trigger.offset_days == offset
    assert campaign.trigger.time == dt.time(18, 0)
    assert campaign.trigger.yearly
    assert campaign.audience.roles == (role,)
    assert set(campaign.audience.countries) == set(STRATEGY_COUNTRIES)
    assert campaign.send_window.contains(campaign.trigger.local_time)
    assert campaign.send_window.start >= dt.time(8) and campaign.send_window.end <= dt.time(21)
    assert campaign.messenger_outside_window == "skip"
    # Every country of the audience has the event in its calendar, so no family is forgotten.
    for country in STRATEGY_COUNTRIES:
        calendar = default_calendars().current(country, TODAY)
        assert calendar is not None and any(campaign.trigger.matches(e) for e in calendar.events), country


def test_examples_are_written_in_five_languages_short_and_say_how_to_stop(examples: dict[str, Campaign]) -> None:
    for campaign in examples.values():
        assert set(campaign.messages) == set(REPLY_LANGUAGES), campaign.id
        assert campaign.whatsapp_template is not None and campaign.whatsapp_template.is_placeholder
        assert set(campaign.whatsapp_template.variables.values()) <= campaign.placeholders
        for language, text in campaign.messages.items():
            where = f"{campaign.id}/{language}"
            assert len(text) <= MAX_EXAMPLE_CHARS, where
            lines = text.splitlines()
            assert STOP_WORDS[language] in lines[-1], where
            assert any(MEDIATOR_WORDS[language] in line for line in lines[-3:]), where
            assert "Jisr" in text or "جسر" in text, where  # says it is the automated assistant
        assert "توقف" in campaign.messages["ar"].splitlines()[-1]


def test_examples_render_for_every_country_language_and_region(examples: dict[str, Campaign]) -> None:
    rendered = 0
    for campaign in examples.values():
        for calendar in default_calendars().all():
            for calendar_event in (e for e in calendar.events if campaign.trigger.matches(e)):
                regions = [None] + [f"{calendar.country}-{key}" for key in calendar_event.regions]
                for region in regions:
                    for language in REPLY_LANGUAGES:
                        text = render(campaign, language, calendar_event, calendar.country, region)
                        assert "{" not in text and "}" not in text
                        assert len(text) <= MAX_EXAMPLE_CHARS, (campaign.id, language, calendar_event.id, region)
                        assert calendar_event.name(language) in text
                        variables = template_variables(campaign, language, calendar_event, calendar.country, region)
                        assert sorted(variables) == ["1", "2", "3"] and all(variables.values())
                        rendered += 1
    assert rendered > 500


# --- Refusals: file:line: field: reason ---------------------------------------------

NO_TEMPLATE = BASE.split("whatsapp_template:")[0] + "messenger_outside_window: skip\n"
LONG_FR = "{event_name} : {dates}. " + "x" * (MAX_TEXT_CHARS - 24 + 1)

INVALID = [
    # (case, campaign text, fragment on the line the error names, field, reason)
    (
        "unknown top-level field, with a suggestion",
        variant("audience:", "audiance:"),
        "audiance:",
        "audiance",
        "unknown field 'audiance' (did you mean 'audience'?)",
    ),
    (
        "unknown nested field",
        variant("  roles: [parent]", "  role: [parent]"),
        "  role: [parent]",
        "audience.role",
        "unknown field 'role' (did you mean 'roles'?)",
    ),
    (
        "missing required field",
        variant("name: Test campaign\n", ""),
        "id: test_campaign",
        "name",
        "missing (required)",
    ),
    (
        "country code that is not ISO 3166",
        variant("countries: [FR, ES]", "countries: [FR, XX]"),
        "countries: [FR, XX]",
        "audience.countries[1]",
        "'XX' is not an ISO 3166 alpha-2 country code (e.g. FR, ES, IT, DE, BE, NL, DZ, CI)",
    ),
    (
        "country code in lower case",
        variant("countries: [FR, ES]", "countries:\n    - FR\n    - es"),
        "    - es",
        "audience.countries[1]",
        "'es' must be written in capitals: 'ES'",
    ),
    (
        "Morocco is the origin, not a host country",
        variant("countries: [FR, ES]", "countries: [MA]"),
        "countries: [MA]",
        "audience.countries[0]",
        "'MA' is Morocco, the families' country of origin: Jisr never takes it as a contact's host country",
    ),
    (
        "unknown role",
        variant("roles: [parent]", "roles: [parents]"),
        "roles: [parents]",
        "audience.roles[0]",
        "'parents' is not a role (parent, student) (did you mean 'parent'?)",
    ),
    (
        "unknown channel",
        variant("  roles: [parent]", "  roles: [parent]\n  channels: [sms]"),
        "channels: [sms]",
        "audience.channels[0]",
        "'sms' is not a channel (whatsapp, telegram, messenger, webchat)",
    ),
    (
        "region of a country the audience leaves out",
        variant("  roles: [parent]", "  roles: [parent]\n  regions: [DE-BY]"),
        "regions: [DE-BY]",
        "audience.regions[0]",
        "'DE-BY' is in DE, which audience.countries leaves out",
    ),
    (
        "unknown event id",
        variant("event: school_start", "event: school_starts"),
        "event: school_starts",
        "trigger.event",
        "no calendar of FR, ES has the event 'school_starts' (did you mean 'school_start'?); event ids are in content/calendars/",
    ),
    (
        "unknown kind of event",
        variant("event: school_start", 'event: "exams:*"'),
        'event: "exams:*"',
        "trigger.event",
        "'exams:*' names no kind of event (did you mean 'exam:*'?) (kinds: school_start:*, school_end:*, exam:*, deadline:*, holiday:*)",
    ),
    (
        "missing language the audience speaks",
        variant("languages: [fr, es]", "languages: [fr, es, de]"),
        "messages:",
        "messages",
        "missing the message in 'de', which the audience speaks",
    ),
    (
        "audience not restricted by language speaks all five",
        variant("  languages: [fr, es]\n", ""),
        "messages:",
        "messages",
        "missing the message in 'ar', which the audience speaks",
    ),
    (
        "time that is not HH:MM",
        variant('time: "18:00"', 'time: "25:00"'),
        'time: "25:00"',
        "trigger.time",
        "'25:00' is not a time HH:MM (24-hour clock, e.g. \"18:00\")",
    ),
    (
        "time written as a number",
        variant('time: "18:00"', "time: 1800"),
        "time: 1800",
        "trigger.time",
        "'1800' is not a time HH:MM (24-hour clock, e.g. \"18:00\")",
    ),
    (
        "trigger time outside the send window",
        variant('time: "18:00"', 'time: "20:30"'),
        'time: "20:30"',
        "trigger.time",
        "20:30 is outside the send window 09:00–20:00: move the time or the window",
    ),
    (
        "send window starting after it ends",
        variant('send_window: {start: "09:00", end: "20:00"}', 'send_window: {start: "19:00", end: "10:00"}'),
        "send_window:",
        "send_window.start",
        "19:00 must be before the end of the window (10:00)",
    ),
    (
        "send window at night",
        variant('send_window: {start: "09:00", end: "20:00"}', 'send_window:\n  start: "06:00"\n  end: "20:00"'),
        'start: "06:00"',
        "send_window.start",
        "06:00 is before 08:00: no messages at night",
    ),
    (
        "both a date and an event",
        variant("  event: school_start", "  at: 2026-09-01T18:00\n  event: school_start"),
        "event: school_start",
        "trigger.event",
        "'at' and 'event' cannot be used together: choose a fixed date or a calendar event",
    ),
    (
        "event trigger without yearly or school_year",
        variant("  yearly: true\n", ""),
        "trigger:",
        "trigger",
        "say which school years: 'yearly: true' (every school year) or 'school_year: 2026-27' (that one only)",
    ),
    (
        "offset that is not a number of days",
        variant("offset_days: -7", "offset_days: a week before"),
        "offset_days: a week before",
        "trigger.offset_days",
        "'a week before' must be a whole number of days from the event's first day, between -365 and 365 (e.g. -7 for a week before)",
    ),
    (
        "HUMAN_AGENT tag for a campaign",
        variant("messenger_outside_window: skip", "messenger_outside_window: HUMAN_AGENT"),
        "messenger_outside_window:",
        "messenger_outside_window",
        "HUMAN_AGENT is not allowed for campaigns: Meta reserves it for a person answering a user's own message within 7 days, "
        "and a campaign is sent by the engine, not by a person; use one of skip, ACCOUNT_UPDATE, CONFIRMED_EVENT_UPDATE, POST_PURCHASE_UPDATE",
    ),
    (
        "promotional Messenger tag",
        variant("messenger_outside_window: skip", "messenger_outside_window: MARKETING"),
        "messenger_outside_window:",
        "messenger_outside_window",
        "'MARKETING' is not allowed: outside Messenger's 24-hour window only tags for non-promotional updates may be used "
        "(skip, ACCOUNT_UPDATE, CONFIRMED_EVENT_UPDATE, POST_PURCHASE_UPDATE)",
    ),
    (
        "missing WhatsApp template, audience on every channel",
        NO_TEMPLATE,
        "audience:",
        "whatsapp_template",
        "missing: the audience includes WhatsApp, where contacts outside the 24-hour window can only get an approved template "
        "(add whatsapp_template, or leave whatsapp out of audience.channels)",
    ),
    (
        "missing WhatsApp template, audience on WhatsApp",
        variant("  roles: [parent]", "  roles: [parent]\n  channels: [whatsapp, telegram]", NO_TEMPLATE),
        "channels: [whatsapp, telegram]",
        "whatsapp_template",
        "missing: the audience includes WhatsApp, where contacts outside the 24-hour window can only get an approved template "
        "(add whatsapp_template, or leave whatsapp out of audience.channels)",
    ),
    (
        "template SID that is not a Content SID",
        variant("content_sid: HX0123456789abcdef0123456789abcdef", "content_sid: HX123"),
        "content_sid: HX123",
        "whatsapp_template.content_sid",
        "'HX123' is not a Twilio Content SID ('HX' and 32 hexadecimal digits, from Twilio's Content Template Builder)",
    ),
    (
        "template variables with a gap",
        variant("variables: {1: event_name, 2: dates}", "variables: {1: event_name, 3: dates}"),
        "variables: {1: event_name, 3: dates}",
        "whatsapp_template.variables",
        "variables must be numbered 1, 2, 3… without gaps; 2 is missing",
    ),
    (
        "template variable that is not a placeholder",
        variant("variables: {1: event_name, 2: dates}", "variables:\n    1: event_name\n    2: first_name"),
        "2: first_name",
        "whatsapp_template.variables.2",
        "'first_name' is not a placeholder (event_name, first_day, last_day, dates, country) (did you mean 'first_day'?)",
    ),
    (
        "placeholder in one language only",
        variant('es: "¡Hola! {event_name}: {dates}. Para parar, escriba STOP."', 'es: "¡Hola! {event_name}. Para parar, escriba STOP."'),
        'es: "¡Hola!',
        "messages.es",
        "lacks {dates} unlike the 'fr' message: every language must use the same placeholders",
    ),
    (
        "unknown placeholder",
        variant("Bonjour ! {event_name}", "Bonjour {prenom} ! {event_name}"),
        "fr: ",
        "messages.fr",
        "unknown placeholder {prenom} (known: {event_name}, {first_day}, {last_day}, {dates}, {country})",
    ),
    (
        "unmatched brace",
        variant("Bonjour ! {event_name}", "Bonjour ! {event_name"),
        "fr: ",
        "messages.fr",
        "has an unmatched '{' or '}' (write {{ or }} for a literal brace)",
    ),
    (
        "text too long",
        variant('fr: "Bonjour ! {event_name} : {dates}. Pour arrêter, écrivez STOP."', f'fr: "{LONG_FR}"'),
        "fr: ",
        "messages.fr",
        f"the message is {MAX_TEXT_CHARS + 1} characters long; the limit is {MAX_TEXT_CHARS}",
    ),
    (
        "empty text",
        variant('es: "¡Hola! {event_name}: {dates}. Para parar, escriba STOP."', 'es: "  "'),
        'es: "  "',
        "messages.es",
        "the message is empty",
    ),
    (
        "Darija as a message language",
        variant("  es: ", "  ary: "),
        "  ary: ",
        "messages.ary",
        "'ary' is not a reply language (ar, fr, es, it, de) (Darija speakers are written to in Arabic: use 'ar')",
    ),
    (
        "fallback language without a message",
        variant("fallback_language: fr", "fallback_language: it"),
        "fallback_language: it",
        "fallback_language",
        "'it' has no message under messages",
    ),
    (
        "event placeholders in a campaign on a fixed date",
        variant("  event: school_start\n  offset_days: -7\n  time: \"18:00\"\n", "  at: 2026-09-01T18:00\n"),
        "fr: ",
        "messages.fr",
        "{event_name} needs a calendar event, but this campaign's trigger is a fixed date ('at')",
    ),
    (
        "weekly cap below one",
        variant("weekly_cap: 2", "weekly_cap: 0"),
        "weekly_cap: 0",
        "weekly_cap",
        "0 must be a whole number of messages per contact per week, at least 1",
    ),
    (
        "enabled that is not a boolean",
        variant("name: Test campaign", "name: Test campaign\nenabled: yes"),
        "enabled: yes",
        "enabled",
        "must be true or false, not 'yes'",
    ),
    (
        "YAML syntax error",
        variant("  roles: [parent]", "  roles: [parent\n  channels: [whatsapp]"),
        "channels: [whatsapp]",
        "yaml",
        None,  # ruamel's own wording; only the line and field are ours
    ),
]


@pytest.mark.parametrize("text, fragment, field, reason", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_campaigns_are_refused_with_file_line_field_and_reason(
    tmp_path: Path, text: str, fragment: str, field: str, reason: Optional[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CampaignError) as caught:
        load_campaign(path)
    error = caught.value
    line = line_of(text, fragment)
    if reason is None:
        assert str(error).startswith(f"{path}:{line}: {field}: ")
    else:
        assert str(error) == f"{path}:{line}: {field}: {reason}"
    assert (error.path, error.line, error.field) == (path, line, field)


def test_the_base_campaign_is_valid(tmp_path: Path) -> None:
    campaign = load_campaign(write(tmp_path, BASE))
    assert campaign.id == "test_campaign"
    assert campaign.audience.spoken_languages == ("fr", "es")
    assert campaign.trigger.send_day(event("FR", "school_start")) == dt.date(2026, 8, 25)
    assert campaign.whatsapp_template is not None and dict(campaign.whatsapp_template.variables) == {1: "event_name", 2: "dates"}
    assert not campaign.whatsapp_template.is_placeholder


@pytest.mark.parametrize(
    "change",
    [
        ("  roles: [parent]", "  roles: [parent]\n  channels: [telegram, messenger, webchat]"),  # no WhatsApp: no template needed
        ("messenger_outside_window: skip", "messenger_outside_window: confirmed_event_update"),
        ("  yearly: true", "  school_year: 2026-27"),
        ("event: school_start", 'event: "exam:*"'),
        ("  roles: [parent]", "  roles: [parent]\n  regions: [ES-CT, FR-A]\n  levels: [primary]\n  topics: [school_start]"),
    ],
)
def test_valid_variants_load(tmp_path: Path, change: tuple[str, str]) -> None:
    text = variant(*change)
    if "channels: [telegram" in text:
        text = text.split("whatsapp_template:")[0] + "messenger_outside_window: skip\n"
    campaign = load_campaign(write(tmp_path, text))
    assert campaign.id == "test_campaign"


def test_fixed_date_campaign(tmp_path: Path) -> None:
    text = variant("  event: school_start\n  offset_days: -7\n  time: \"18:00\"\n", "  at: 2026-09-01T18:00\n")
    text = text.replace("{event_name} : {dates}", "{country}").replace("{event_name}: {dates}", "{country}")
    text = text.replace("variables: {1: event_name, 2: dates}", "variables: {1: country}")
    campaign = load_campaign(write(tmp_path, text))
    assert campaign.trigger.at == dt.datetime(2026, 9, 1, 18, 0)
    assert campaign.trigger.local_time == dt.time(18, 0)
    assert render(campaign, "es", country="FR") == "¡Hola! Francia. Para parar, escriba STOP."
    assert template_variables(campaign, "fr", country="ES") == {"1": "Espagne"}


def test_duplicate_ids_in_a_directory_are_refused(tmp_path: Path) -> None:
    write(tmp_path, BASE, "a.yml")
    second = write(tmp_path, BASE, "b.yml")
    with pytest.raises(CampaignError) as caught:
        load_campaigns(tmp_path)
    assert str(caught.value) == f"{second}:1: id: 'test_campaign' is already the id of {tmp_path / 'a.yml'}; ids must be unique"


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing yet\n")
    with pytest.raises(CampaignError, match=r":1: campaign: the file is empty"):
        load_campaign(path)


# --- Rendering -------------------------------------------------------------------


@pytest.fixture
def base_campaign(tmp_path: Path) -> Campaign:
    return load_campaign(write(tmp_path, BASE))


def test_render_uses_the_contacts_language_with_the_events_name_and_dates(base_campaign: Campaign) -> None:
    # France's rentrée is officially published (confirmed): no "to be confirmed" mark.
    assert render(base_campaign, "fr", event("FR", "school_start"), "FR") == (
        "Bonjour ! Rentrée scolaire : 1 septembre 2026. Pour arrêter, écrivez STOP."
    )
    # Spain's date is not published yet: marked, in Spanish, after the date.
    assert render(base_campaign, "es", event("ES", "school_start"), "ES") == (
        "¡Hola! Inicio de las clases (según comunidad y etapa): 7–15 sept 2026 (por confirmar). Para parar, escriba STOP."
    )


def test_render_falls_back_for_a_language_the_campaign_lacks(base_campaign: Campaign) -> None:
    for language in ("de", "ar", "ary", "en", None):
        text = render(base_campaign, language, event("FR", "school_start"), "FR")
        assert text.startswith("Bonjour ! Rentrée scolaire : 1 septembre 2026."), language


def test_render_uses_regional_dates(base_campaign: Campaign) -> None:
    school_start = event("ES", "school_start")
    catalonia = school_start.dates_for("CT")
    assert catalonia.first_day == catalonia.last_day
    text = render(base_campaign, "es", school_start, "ES", "ES-CT")
    assert f"{catalonia.first_day.day} de septiembre de 2026 (por confirmar)" in text
    # A region of another country (the family moved) is ignored: the country's dates.
    assert render(base_campaign, "es", school_start, "ES", "DE-BY") == render(base_campaign, "es", school_start, "ES")


def test_render_in_arabic_and_german_with_real_events(examples: dict[str, Campaign]) -> None:
    bac = event("DZ", "exam:bac")
    arabic = render(examples["exam_period_students"], "ar", bac, "DZ")
    assert "📅 الجزائر: امتحان شهادة البكالوريا، 6–17 يونيو 2027 (في انتظار التأكيد)." in arabic
    assert arabic.splitlines()[-1].endswith("اكتبوا STOP أو «توقف».")

    bavaria = render(examples["school_start_parents"], "de", event("DE", "school_start"), "DE", "DE-BY")
    assert "📅 Deutschland: Schulbeginn nach den Sommerferien, 15. September 2026." in bavaria
    assert bavaria.splitlines()[-1] == "Keine Nachrichten mehr? Schreiben Sie STOP."

    italian = render(examples["exam_period_parents"], "it", event("IT", "exam:maturita_prima_prova"), "IT")
    assert "16 giugno 2027 (da confermare)" in italian  # a one-day exam reads as one date


def test_template_variables_follow_the_rendered_text(examples: dict[str, Campaign]) -> None:
    bac = event("DZ", "exam:bac")
    variables = template_variables(examples["exam_period_parents"], "fr", bac, "DZ")
    assert variables == {"1": "Baccalauréat", "2": "Algérie", "3": "6–17 juin 2027 (à confirmer)"}


def test_render_refuses_to_guess_missing_values(base_campaign: Campaign) -> None:
    with pytest.raises(RenderError, match=r"\{event_name\} but no calendar event"):
        render(base_campaign, "fr")


def test_audience_includes() -> None:
    audience = Audience(countries=("FR",), roles=("parent",), languages=("ar", "fr"))
    assert audience.includes(country="fr", language="ary", role="parent", channel="whatsapp")
    assert not audience.includes(country="FR", language="fr", role=None, channel="whatsapp")  # role unknown
    assert not audience.includes(country="ES", language="fr", role="parent", channel="telegram")
    assert Audience().reached_channels == CHANNELS
    assert Audience(topics=("exams",)).includes(country="FR", language="fr", role="student", channel="webchat", topics=["exams"])
    # Holds no topic and never stopped one: every topic's reminders. Holds none but stopped some: it
    # stopped all it held, so none (a contact that never chose and stops one is recorded holding
    # the others: ContactStore.stop_topics). Chose others: not this one.
    assert Audience(topics=("exams",)).includes(country="FR", language="fr", role="student", channel="webchat")
    assert not Audience(topics=("exams",)).includes(country="FR", language="fr", role="student", channel="webchat", stopped_topics=["exams"])
    assert not Audience(topics=("exams", "orientation")).includes(country="FR", language="fr", role="student", channel="webchat", stopped_topics=["exams"])
    assert Audience(topics=("exams", "orientation")).includes(
        country="FR", language="fr", role="student", channel="webchat", topics=["orientation", "deadlines"], stopped_topics=["exams"])
    assert not Audience(topics=("exams",)).includes(country="FR", language="fr", role="student", channel="webchat", topics=["orientation"])
